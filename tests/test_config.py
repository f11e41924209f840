"""hugexml/core/config.py: defaults, every key, bad values, unknown names, files."""
from __future__ import annotations

import os
import re

import pytest

from hugexml.core.config import (
    DEFAULT_CONFIG_TEXT,
    MAX_CONFIG_BYTES,
    Config,
    load_config,
    parse_config,
)
from hugexml.core.errors import ConfigError
from hugexml.core.typed import fields

GIB_KIB = 1024 * 1024


def test_defaults():
    assert Config() == Config(margin_min_kib=GIB_KIB, margin_percent=5.0, compact=True,
                              drop_caches=False, retries=3, timeout_s=30.0, lock_timeout_s=90.0,
                              demote=True, release_policy="release",
                              keep_for=((1048576, 600.0), (2048, 0.0)),
                              pending_timeout_s=600.0, boot_reserve="", hook_log="syslog")
    assert Config().keep_window_s(1048576) == 600.0 and Config().keep_window_s(2048) == 0.0
    assert Config().keep_window_s(16 * 1048576) == 0.0  # a size not listed: at once
    assert parse_config("") == Config()
    assert parse_config(DEFAULT_CONFIG_TEXT) == Config()  # all commented out


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        Config().retries = 5  # type: ignore[misc]


def uncommented() -> str:
    return re.sub(r"(?m)^#(?=[a-z_]+ =)", "", DEFAULT_CONFIG_TEXT)


def test_default_text_uncommented_is_the_defaults_and_lists_every_key():
    text = uncommented()
    assert parse_config(text) == Config()
    listed = re.findall(r"(?m)^([a-z_]+) =", text)
    assert len(listed) == len(fields(Config)) == 13
    assert sorted(listed) == sorted(k for _s, k in KEYS_SEEN)


KEYS_SEEN = [("allocation", "margin_min"), ("allocation", "margin_percent"),
             ("allocation", "compact"), ("allocation", "drop_caches"),
             ("allocation", "retries"), ("allocation", "timeout"),
             ("allocation", "lock_timeout"), ("allocation", "demote"), ("release", "policy"),
             ("release", "keep_for"),
             ("claims", "pending_timeout"), ("boot", "reserve"), ("hook", "log")]

GOOD = [
    ("allocation", "margin_min", "2G", "margin_min_kib", 2 * GIB_KIB),
    ("allocation", "margin_min", "512MiB", "margin_min_kib", 512 * 1024),
    ("allocation", "margin_min", "0", "margin_min_kib", 0),
    ("allocation", "margin_percent", "12.5", "margin_percent", 12.5),
    ("allocation", "margin_percent", "0", "margin_percent", 0.0),
    ("allocation", "compact", "no", "compact", False),
    ("allocation", "compact", "Off", "compact", False),
    ("allocation", "drop_caches", "yes", "drop_caches", True),
    ("allocation", "drop_caches", "1", "drop_caches", True),
    ("allocation", "retries", "0", "retries", 0),
    ("allocation", "retries", "100", "retries", 100),
    ("allocation", "timeout", "2.5", "timeout_s", 2.5),
    ("allocation", "lock_timeout", "120", "lock_timeout_s", 120.0),
    ("allocation", "lock_timeout", "30.5", "lock_timeout_s", 30.5),
    ("allocation", "demote", "no", "demote", False),
    ("release", "policy", "keep", "release_policy", "keep"),
    ("release", "keep_for", "1G=2s", "keep_for", ((1048576, 2.0),)),
    ("release", "keep_for", "2M=1h 1G=1d", "keep_for", ((1048576, 86400.0), (2048, 3600.0))),
    ("release", "keep_for", "1GiB=0 2048KiB=90", "keep_for", ((1048576, 0.0), (2048, 90.0))),
    ("release", "keep_for", "", "keep_for", ()),
    ("release", "keep_for", "1G=2.5m", "keep_for", ((1048576, 150.0),)),
    ("release", "policy", "RELEASE", "release_policy", "release"),
    ("claims", "pending_timeout", "60", "pending_timeout_s", 60.0),
    ("boot", "reserve", "2M:512@0   1G:4@1", "boot_reserve", "2M:512@0 1G:4@1"),
    ("boot", "reserve", "2048KiB:8", "boot_reserve", "2048KiB:8"),
    ("hook", "log", "stderr", "hook_log", "stderr"),
    ("hook", "log", "none", "hook_log", "none"),
    ("hook", "log", "syslog # inline comment", "hook_log", "syslog"),
]


@pytest.mark.parametrize("section,key,raw,field,value", GOOD,
                         ids=[f"{g[1]}={g[2]}" for g in GOOD])
def test_every_key(section, key, raw, field, value):
    config = parse_config(f"[{section}]\n{key} = {raw}\n")
    assert getattr(config, field) == value
    assert type(getattr(config, field)) is type(value)
    # every other field keeps its default
    others = {f: getattr(config, f) for f in fields(Config)
              if f != field}
    assert others == {f: getattr(Config(), f) for f in fields(Config)
                      if f != field}


def test_all_goods_cover_every_key():
    assert {(g[0], g[1]) for g in GOOD} == set(KEYS_SEEN)


BAD = [
    ("allocation", "margin_min", "lots", "not a size"),
    ("allocation", "margin_min", "-1G", "not a size"),
    ("allocation", "margin_min", "", "not a size"),
    ("allocation", "margin_min", "99999999999T", ""),
    ("allocation", "margin_percent", "51", "outside 0..50"),
    ("allocation", "margin_percent", "nan", "outside"),
    ("allocation", "margin_percent", "five", "not a number"),
    ("allocation", "compact", "maybe", "expected yes or no"),
    ("allocation", "compact", "", "expected yes or no"),
    ("allocation", "drop_caches", "2", "expected yes or no"),
    ("allocation", "retries", "-1", "outside 0..100"),
    ("allocation", "retries", "101", "outside"),
    ("allocation", "retries", "2.5", "not a number"),
    ("allocation", "retries", "", "not a number"),
    ("allocation", "timeout", "inf", "outside"),
    ("allocation", "timeout", "86401", "outside"),
    ("allocation", "lock_timeout", "-0.5", "outside"),
    ("allocation", "demote", "sometimes", "expected yes or no"),
    ("release", "policy", "delete", "not one of release, keep"),
    ("release", "keep_for", "1G", "not SIZE=DURATION"),
    ("release", "keep_for", "1G=-1m", "not a duration"),
    ("release", "keep_for", "1G=10 minutes", "not SIZE=DURATION"),
    ("release", "keep_for", "1G=1e9", "not a duration"),
    ("release", "keep_for", "1G=31d", "longer than 30 days"),
    ("release", "keep_for", "1G=999999999d", "longer than 30 days"),
    ("release", "keep_for", "1G=forever", "not a duration"),
    ("release", "keep_for", "4K=1m", "not a hugepage size"),
    ("release", "keep_for", "1G=1m 1024M=2m", "listed twice"),
    ("release", "keep_for", "lots=1m", "not a size"),
    ("release", "keep_for", "1G=\u0661m", "not a duration"),
    ("claims", "pending_timeout", "0", "outside 1.."),
    ("claims", "pending_timeout", "1e9", "outside"),
    ("boot", "reserve", "2M", "not SIZE:COUNT[@NODE]"),
    ("boot", "reserve", "2M:512@0 junk", "'junk' is not SIZE:COUNT"),
    ("boot", "reserve", "2M:-1", "not SIZE:COUNT"),
    ("boot", "reserve", "3X:1", "not SIZE:COUNT"),
    ("boot", "reserve", "2M:1@5000", "out of range"),
    ("boot", "reserve", "\u0662M:1", "not SIZE:COUNT"),
    ("boot", "reserve", "0M:1", "positive"),
    ("hook", "log", "journal", "not one of syslog, stderr, none"),
]


@pytest.mark.parametrize("section,key,raw,why", BAD, ids=[f"{b[1]}={b[2]}" for b in BAD])
def test_bad_values_name_the_key(section, key, raw, why):
    with pytest.raises(ConfigError) as info:
        parse_config(f"[{section}]\n{key} = {raw}\n", "/etc/hugexml/hugexml.conf")
    msg = str(info.value)
    assert msg.startswith(f"config /etc/hugexml/hugexml.conf: [{section}] {key}: ")
    assert why in msg
    assert "\n" not in msg and len(msg) < 200
    assert info.value.exit_code == 2


@pytest.mark.parametrize("text,key,why", [
    ("[alocation]\nretries = 3\n", "[alocation]", "unknown section"),
    ("[Allocation]\nretries = 3\n", "[Allocation]", "unknown section"),
    ("[DEFAULT]\nretries = 3\n", "[DEFAULT]", "unknown section"),
    ("[allocation]\nretry = 3\n", "[allocation] retry", "unknown key (known: compact, "),
    ("[hook]\npolicy = keep\n", "[hook] policy", "unknown key (known: log)"),
    ("retries = 3\n", "syntax", "no section headers"),
    ("[allocation]\nretries = 3\nretries = 4\n", "syntax", "already exists"),
    ("[allocation]\n[allocation]\n", "syntax", "already exists"),
    ("[allocation\n", "syntax", ""),
    ("[allocation]\njust words\n", "syntax", ""),
])
def test_unknown_names_and_syntax(text, key, why):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "x.conf")
    msg = str(info.value)
    assert msg.startswith(f"config x.conf: {key}: ")
    assert why in msg and "\n" not in msg


def test_empty_default_section_header_is_harmless():
    assert parse_config("[DEFAULT]\n[hook]\nlog = none\n").hook_log == "none"


def test_keys_are_case_insensitive_values_stripped():
    assert parse_config("[allocation]\nRetries =   7  \n").retries == 7


# --- files -------------------------------------------------------------------------------
def test_missing_default_file_is_the_defaults(tmp_path):
    assert load_config(str(tmp_path / "none.conf"), explicit=False) == Config()


def test_missing_explicit_file_is_an_error(tmp_path):
    path = str(tmp_path / "none.conf")
    with pytest.raises(ConfigError, match=r"config .*none.conf: file: no such file"):
        load_config(path, explicit=True)


def test_file_is_read(tmp_path):
    path = tmp_path / "hugexml.conf"
    path.write_text(uncommented().replace("#", "# ").replace("policy = release",
                                                             "policy = keep"))
    assert load_config(str(path), explicit=True) == Config(release_policy="keep")


def test_oversize_file(tmp_path):
    path = tmp_path / "big.conf"
    path.write_text("# pad\n" * (MAX_CONFIG_BYTES // 6 + 1))
    assert os.path.getsize(path) > MAX_CONFIG_BYTES
    with pytest.raises(ConfigError, match=f"file: larger than {MAX_CONFIG_BYTES} bytes"):
        load_config(str(path))
    path.write_text("#" * (MAX_CONFIG_BYTES - 1) + "\n")  # exactly the limit: read
    assert load_config(str(path)) == Config()


def test_binary_and_unreadable_files(tmp_path):
    path = tmp_path / "bin.conf"
    path.write_bytes(b"[hook]\nlog = \xff\xfe\n")
    with pytest.raises(ConfigError, match="file: not UTF-8 text"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="file: Is a directory"):
        load_config(str(tmp_path), explicit=False)  # an OSError other than ENOENT


def test_the_default_lock_wait_outlasts_the_allocation_budget():
    # A start waiting for the lock behind a slow 1G grow must not give up before it ends.
    assert Config().lock_timeout_s > Config().timeout_s
    assert parse_config("[allocation]\ntimeout = 60\nlock_timeout = 61\n").lock_timeout_s == 61


@pytest.mark.parametrize("text", [
    "[allocation]\nlock_timeout = 30\n",            # = the default timeout
    "[allocation]\nlock_timeout = 0\n",
    "[allocation]\ntimeout = 90\n",                 # = the default lock_timeout
    "[allocation]\ntimeout = 100\nlock_timeout = 50\n",
])
def test_a_lock_wait_not_above_the_timeout_is_one_line_naming_both_keys(text):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "/etc/hugexml/hugexml.conf")
    msg = str(info.value)
    assert msg.startswith("config /etc/hugexml/hugexml.conf: [allocation] lock_timeout: ")
    assert "[allocation] timeout" in msg and "must be larger" in msg
    assert "\n" not in msg and len(msg) < 200 and info.value.exit_code == 2
