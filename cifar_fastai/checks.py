"The range rules of arguments and options, each written once: library functions and `RunConfig.check` share them"
from cifar_fastai.errors import ConfigError

__all__ = ['IMAGE_SIZE', 'one_of', 'whole', 'positive', 'non_negative', 'within']

IMAGE_SIZE = 32  # CIFAR-10's side in pixels; the data refuses images of any other size

# `name` is what the message calls the value: "`lr`" from Python, "--lr" from the command line. Each rule raises
# `ConfigError`, a `ValueError`, saying what is wrong and what was given; it returns the value when it passes.


def _is_number(value) -> bool: return isinstance(value, (int, float)) and not isinstance(value, bool)


def one_of(name: str, value, allowed):
    "`value`, if it is one of `allowed`"
    if value not in allowed: raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


def whole(name: str, value, low: int = 1, high: int | None = None):
    "`value`, if it is a whole number >= `low` (and <= `high`, if given)"
    ok = isinstance(value, int) and not isinstance(value, bool) and low <= value and (high is None or value <= high)
    if not ok:
        span = f">= {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(f"{name} must be a whole number {span}, got {value!r}")
    return value


def positive(name: str, value):
    "`value`, if it is a number > 0"
    if not (_is_number(value) and value > 0): raise ConfigError(f"{name} must be a positive number, got {value!r}")
    return value


def non_negative(name: str, value):
    "`value`, if it is a number >= 0"
    if not (_is_number(value) and value >= 0): raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return value


def within(name: str, value, low: float = 0., high: float = 1., low_open: bool = False, high_open: bool = True):
    "`value`, if it lies between `low` and `high` ([0, 1) by default; `*_open` leaves that end out)"
    above = _is_number(value) and (value > low if low_open else value >= low)
    if not (above and (value < high if high_open else value <= high)):
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{name} must be in {span}, got {value!r}")
    return value
