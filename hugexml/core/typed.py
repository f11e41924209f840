"""Typed records without code generation at import: ``Typed`` instead of ``@dataclass``.

``dataclasses`` costs about 14 ms to import (it pulls in ``inspect``) and about 1 ms per
class, which generates and compiles its methods: on the hook's path that was a third of
hugexml's own start-up. A ``Typed`` subclass declares its fields the same way (annotated
class attributes, in order, with defaults and ``field(default_factory=...)``); one generic
``__init__``, ``__eq__``, ``__repr__`` and ``__hash__`` serve every class, and type checkers
treat the subclasses as dataclasses (``dataclass_transform``). ``frozen=True`` makes
instances immutable and hashable, as ``@dataclass(frozen=True)`` does.

    class Cell(Typed, frozen=True):
        cell_id: int
        memory_kib: int
        mem_access: Optional[str] = None

Only ``os``-free stdlib at import: nothing.
"""
from __future__ import annotations

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~4 ms
if TYPE_CHECKING:  # pragma: no cover
    from typing import Any, Callable, ClassVar, TypeVar

    from typing_extensions import dataclass_transform

    T = TypeVar("T", bound="Typed")
else:
    def dataclass_transform(**_kwargs):
        return lambda cls: cls

_MISSING = object()


class _Factory:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made per instance (a list, a dict...)."""
    return _Factory(default_factory)


@dataclass_transform(field_specifiers=(field,))
class Typed:
    """Base of hugexml's records (see the module docstring)."""

    __fields__: ClassVar[tuple[str, ...]] = ()
    __defaults__: ClassVar[dict[str, Any]] = {}
    __frozen__: ClassVar[bool] = False

    def __init_subclass__(cls, frozen: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # the class's own annotations, as strings (every module has annotations from
        # __future__); not inspect.get_annotations: inspect costs ~10 ms to import
        own = [name for name, kind in cls.__dict__.get("__annotations__", {}).items()  # noqa: RUF063
               if not name.startswith("__") and "ClassVar" not in str(kind)]
        cls.__fields__ = tuple(dict.fromkeys([*cls.__fields__, *own]))
        defaults = dict(cls.__defaults__)
        for name in own:
            if name in cls.__dict__:
                defaults[name] = cls.__dict__[name]
                delattr(cls, name)  # instances carry the value, the class only the default
        cls.__defaults__ = defaults
        cls.__frozen__ = frozen or cls.__frozen__
        if cls.__frozen__:
            cls.__hash__ = Typed._hash  # type: ignore[method-assign, assignment]
        else:
            cls.__hash__ = None  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        fields = self.__fields__
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes {len(fields)} fields, "
                            f"{len(args)} given")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{type(self).__name__} has no field {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__}: {name!r} given twice")
            values[name] = value
        setter = object.__setattr__
        for name in fields:
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = self.__defaults__.get(name, _MISSING)
                if value is _MISSING:
                    raise TypeError(f"{type(self).__name__} needs {name!r}")
                if isinstance(value, _Factory):
                    value = value.make()
            setter(self, name, value)
        post = getattr(self, "__post_init__", None)
        if post is not None:
            post()

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__frozen__:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot set {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if self.__frozen__:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name!r}")
        object.__delattr__(self, name)

    def __iter__(self) -> Any:
        """The values in field order: ``nr, free, surplus = pool`` (as a named tuple)."""
        return iter(self._values())

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__fields__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def _hash(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__fields__)
        return f"{type(self).__name__}({inner})"


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` with some fields changed (``dataclasses.replace``)."""
    values = {name: getattr(obj, name) for name in obj.__fields__}
    values.update(changes)
    return type(obj)(**values)


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record or record class, in order."""
    return tuple(obj.__fields__)


def as_dict(obj: Typed) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__fields__}
