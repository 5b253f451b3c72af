from dataclasses import dataclass, field

import pytest

from smallfoot.errors import ConfigError, UnknownNameError
from smallfoot.methods import Method, get_method, list_methods, parse_options, register_method


@dataclass
class DemoOptions:
    rate: float = 0.3
    steps: int = 2
    flag: bool = False
    widths: tuple[int, ...] = (4, 8)
    mode: str = "a"
    limit: int | None = None
    names: list[str] = field(default_factory=list)


def test_parse_options_converts_cli_strings():
    options = parse_options(
        DemoOptions,
        {
            "rate": "0.5",
            "steps": "3",
            "flag": "true",
            "widths": "1,2,3",
            "limit": "none",
            "names": "x,y",
        },
    )
    assert options == DemoOptions(0.5, 3, True, (1, 2, 3), "a", None, ["x", "y"])
    assert parse_options(DemoOptions, {"limit": 5}).limit == 5


def test_parse_options_errors_name_the_choices():
    with pytest.raises(ConfigError, match="no option 'rte'.*--rate"):
        parse_options(DemoOptions, {"rte": 1})
    with pytest.raises(ConfigError, match="expected int"):
        parse_options(DemoOptions, {"steps": "many"})
    with pytest.raises(ConfigError, match="true/false"):
        parse_options(DemoOptions, {"flag": "maybe"})


def test_registry():
    @register_method
    class Demo(Method):
        name = "demo-test"
        description = "test only"
        Options = DemoOptions

    method = get_method("demo-test", {"rate": "0.1"})
    assert isinstance(method, Demo) and method.options.rate == 0.1
    assert "baseline" in [cls.name for cls in list_methods()]
    with pytest.raises(UnknownNameError, match="baseline"):
        get_method("nope")
    with pytest.raises(ConfigError, match="its options: none"):
        get_method("baseline", {"x": 1})


def test_unknown_option_lists_keyword_options_as_their_flags():
    from smallfoot.errors import ConfigError
    from smallfoot.methods import get_method

    with pytest.raises(ConfigError) as error:
        get_method("manifold", {"bogus": 1})
    assert "--lambda," in str(error.value) and "--lambda-" not in str(error.value)


def test_every_method_option_says_what_it_means():
    from smallfoot.methods import get_method_class, option_fields

    missing = [
        f"{cls.name} --{name.replace('_', '-')}"
        for cls in list_methods()
        if cls.__module__.startswith("smallfoot.")  # not a test's demo method
        for name, _, _, help_text in option_fields(cls.Options)
        if not help_text.strip()
    ]
    assert not missing
    # a composition carries the help of both parts (its class has no source to read)
    composed = get_method_class("facto+reversible").Options
    helps = {name: help_text for name, _, _, help_text in option_fields(composed)}
    assert helps["variant"].startswith("which design") and helps["inr"].startswith("internal")
