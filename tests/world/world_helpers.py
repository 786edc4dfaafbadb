"""Test helpers of the world tests (a module with a unique name: tests/conftest.py is also "conftest")."""

from pydantic import BaseModel


class ParamReads:
    """Wraps a params object and records the dotted keys code reads from it: a leaf value read records its
    key, a section used whole (``model_dump``, ``model_copy``, passed to a pydantic method) records the section."""

    def __init__(self, obj: BaseModel, log: set, prefix: str = ""):
        object.__setattr__(self, "_obj", obj)
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_prefix", prefix)

    @property
    def __class__(self):  # the library checks it was given a section (lpoi.config.section_of): it was
        return type(self._obj)

    def __getattr__(self, name):
        value = getattr(self._obj, name)
        key = f"{self._prefix}{name}"
        if name in type(self._obj).model_fields:
            if isinstance(value, BaseModel):
                return ParamReads(value, self._log, key + ".")
            self._log.add(key)
            return value
        self._log.add(self._prefix.rstrip("."))  # a method of the section: it reads all of it
        return value


def covered(reads: set, declared: list) -> tuple[set, set]:
    """(reads no declared param covers, declared params nothing reads); a section covers its keys."""
    under = lambda key, d: key == d or key.startswith(d + ".") or d.startswith(key + ".")  # noqa: E731
    return ({r for r in reads if not any(r == d or r.startswith(d + ".") for d in declared)},
            {d for d in declared if not any(under(r, d) for r in reads)})
