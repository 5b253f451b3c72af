"""The method registry: the one place mapping a method name to how it builds, trains and reports.

A method is a subclass of :class:`Method` registered with :func:`register_method`. Its
``Options`` dataclass declares its knobs; each field becomes a ``--kebab-case`` flag of
``smallfoot train`` and a key of the ``[method_options]`` TOML table, so a new technique gets the
CLI, the run directory and the benchmarks with a few lines::

    @register_method
    class Facto(Method):
        name = "facto"
        description = "Facto-CNN low-rank training"

        @dataclass
        class Options:
            inr: float = 0.3

        def build_model(self, ctx): ...
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from smallfoot.config import RunConfig
from smallfoot.data import ArrayDataset, StreamDataset, ordered_loader
from smallfoot.data.filtering import FilterSpec
from smallfoot.errors import ConfigError, UnknownNameError
from smallfoot.losses import build_loss
from smallfoot.memory import estimate, measure
from smallfoot.memory.meter import MemoryReport
from smallfoot.models import build_model
from smallfoot.plugins import load_plugins
from smallfoot.train.filtering import online_filter
from smallfoot.train.trainer import Callback, TrainConfig, Trainer, make_optimizer


@dataclass
class RunContext:
    """What a method needs to run: the config, its parsed options, the data and where to write."""

    config: RunConfig
    options: Any  # the method's Options instance
    train_set: ArrayDataset | StreamDataset
    test_set: ArrayDataset | StreamDataset
    run_dir: Path | None = None
    device: str = "cpu"
    resume: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return self.train_set.input_shape

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset."""
        return self.train_set.num_classes

    def train_config(self) -> TrainConfig:
        """The trainer's hyper-parameters from the run config."""
        return TrainConfig.from_run_config(self.config, device=self.device)


@dataclass
class TrainOutcome:
    """What a method returns: the trained model, final metrics, history and memory report."""

    model: nn.Module
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    memory: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class NoOptions:
    """A method without options."""


class Method:
    """Base class of training methods: plain backprop unless a subclass overrides a step."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    custom_backward: ClassVar[bool] = False
    """the method replaces autograd's backward for some modules"""
    changes_optimizer: ClassVar[bool] = False
    """the method brings its own optimizer"""
    staged: ClassVar[bool] = False
    """the method trains in stages (its memory report names the largest stage)"""
    online_filters: ClassVar[bool] = True
    """an online ``--filter`` works: the method trains through :meth:`make_trainer`"""
    streams: ClassVar[bool] = True
    """the method takes a streamed dataset (a user's ``IterableDataset`` with
    ``in_memory=false``): it reads the training set only through the Trainer's epochs"""
    user_model: ClassVar[str] = ""
    """what the method does with a user's own ``nn.Module`` (``--model package.module:function``):
    which modules it takes, or why it refuses them"""

    def __init__(self, options: Any | None = None):
        self.options = options if options is not None else self.Options()

    def build_model(self, ctx: RunContext) -> nn.Module:
        """The model to train: ``config.model`` built with ``config.model_options``."""
        return build_model(
            ctx.config.model, ctx.input_shape, ctx.num_classes, **ctx.config.model_options
        )

    def callbacks(self, ctx: RunContext, model: nn.Module) -> list[Callback]:
        """Trainer callbacks the method needs."""
        return []

    def make_loss(self, ctx: RunContext):
        """``(loss_fn, predict_fn)`` from ``config.loss`` and ``config.loss_options``."""
        return build_loss(ctx.config.loss, ctx.num_classes, **ctx.config.loss_options)

    def make_optimizer(self, ctx: RunContext, model: nn.Module) -> torch.optim.Optimizer:
        """SGD or AdamW over the model's trainable parameters."""
        return make_optimizer(model, ctx.train_config())

    def make_trainer(
        self,
        ctx: RunContext,
        model: nn.Module,
        trainer_class: type[Trainer] = Trainer,
        **trainer_options: Any,
    ) -> Trainer:
        """A ``trainer_class`` (a :class:`Trainer`) wired with this method's loss, optimizer
        and callbacks; ``trainer_options`` are the subclass's own keyword arguments."""
        loss_fn, predict_fn = self.make_loss(ctx)
        callbacks = self.callbacks(ctx, model)
        if ctx.config.filter and (spec := FilterSpec.parse(ctx.config.filter)).online:
            callbacks.append(online_filter(spec))
        return trainer_class(
            model,
            ctx.train_set,
            ctx.test_set,
            ctx.train_config(),
            loss_fn=loss_fn,
            predict_fn=predict_fn,
            optimizer=self.make_optimizer(ctx, model),
            callbacks=callbacks,
            run_dir=ctx.run_dir,
            progress=ctx.config.progress,
            **trainer_options,
        )

    def train(self, ctx: RunContext) -> TrainOutcome:
        """Build, (resume,) fit and measure; returns the outcome."""
        model = self.build_model(ctx)
        if ctx.config.init:
            load_initial_weights(model, ctx.config.init)
        trainer = self.make_trainer(ctx, model)
        if ctx.resume:
            trainer.load_checkpoint()
        metrics = trainer.fit()
        memory = self.measure_memory(ctx, trainer) if ctx.config.measure_memory else None
        return TrainOutcome(trainer.model, metrics, trainer.history, memory)

    def model_name(self, ctx: RunContext) -> str:
        """The name of the model this method actually trains (``config.model`` unless the
        method swaps it, e.g. for its reversible twin); the summary and ``compare`` show it."""
        return ctx.config.model

    def check_run(self, ctx: RunContext) -> None:
        """Refuse, with one ``ConfigError`` line naming the fix, a run this method cannot honour
        as configured (too few epochs, wrong model, wrong input shape), before any work starts."""

    @classmethod
    def compose(cls, other: type[Method]) -> type[Method] | None:
        """The class of ``cls+other`` when this method can wrap ``other`` through their
        public hooks; None when it does not wrap others; ``ConfigError`` with the reason when
        it cannot wrap this one."""
        return None

    def adapt(self, config: Any, input_shape: tuple[int, ...]) -> tuple[Any, list[str]]:
        """``(config, notes)``: ``config`` changed so this method can run it (another model,
        padding, more epochs) and one note per change, for ``compare``; unchanged by default."""
        return config, []

    def metered_step(self, ctx: RunContext) -> tuple[nn.Module, Any, torch.optim.Optimizer]:
        """``(module, loss_fn, optimizer)`` that one training step of this method runs, for
        :meth:`step_memory` (built under fake tensors there when estimating)."""
        loss_fn, _ = self.make_loss(ctx)
        net = self.build_model(ctx)
        return net, loss_fn, self.make_optimizer(ctx, net)

    def step_memory(self, ctx: RunContext, *, fake: bool = False) -> MemoryReport:
        """The meter's report of one training step as this method trains: its
        :meth:`metered_step` on a batch of ``config.batch_size`` random inputs of
        ``ctx.input_shape`` (estimated on fake tensors when ``fake``). Staged methods report
        their largest stage (``report.stage`` names it); a method without a backprop step
        raises ``ConfigError``."""
        return self.step_memory_of(ctx, self.metered_step, fake=fake)

    def step_memory_of(
        self,
        ctx: RunContext,
        build: Callable[[RunContext], tuple[nn.Module, Any, torch.optim.Optimizer]],
        *,
        fake: bool = False,
    ) -> MemoryReport:
        """The meter's report of one step of ``build(ctx)``'s ``(module, loss_fn, optimizer)``
        on a batch of ``config.batch_size`` random inputs of ``ctx.input_shape`` (built and
        estimated on fake tensors when ``fake``)."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        batch, shape = ctx.config.batch_size, ctx.input_shape
        torch.manual_seed(ctx.config.seed)
        if fake:
            with FakeTensorMode():
                net, loss_fn, opt = build(ctx)
                x = torch.randn(batch, *shape)
                y = torch.randint(ctx.num_classes, (batch,))
            return estimate(net, (x, y), loss_fn=loss_fn, optimizer=opt)
        net, loss_fn, opt = build(ctx)
        x, y = torch.randn(batch, *shape), torch.randint(ctx.num_classes, (batch,))
        return measure(net, (x, y), loss_fn=loss_fn, optimizer=opt)

    def measure_memory(self, ctx: RunContext, trainer: Trainer) -> dict[str, Any]:
        """The meter's report of one training step of ``trainer.model`` at the run's batch size."""

        x, y = example_batch(ctx.train_set, ctx.config.batch_size, ctx.device)
        return measure(
            trainer.model, (x, y), loss_fn=trainer.loss_fn, optimizer=trainer.optimizer
        ).to_dict()


def example_batch(
    dataset: ArrayDataset | StreamDataset, batch_size: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first training batch (copies; a stream's first batch), as the meter measures it."""
    x, y = next(iter(ordered_loader(dataset, min(batch_size, len(dataset))).epoch(0)))
    return x.to(device), y.to(device)


def load_initial_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict (or a checkpoint's ``model`` entry) from ``path`` into ``model``."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--init file {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(
            f"--init {path} does not fit the model: {first}. Build the same model/options"
        ) from None


# -- registry ------------------------------------------------------------------------------
_REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register a :class:`Method` subclass under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a non-empty `name`")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass")
    _REGISTRY[cls.name] = cls
    return cls


def list_methods(pattern: str = "*") -> list[type[Method]]:
    """Registered method classes whose name matches the glob ``pattern``, sorted by name."""
    load_plugins()
    return [cls for name, cls in sorted(_REGISTRY.items()) if fnmatch.fnmatch(name, pattern)]


def get_method_class(name: str) -> type[Method]:
    """The registered class of method ``name``; raises ``UnknownNameError`` listing the choices.
    ``a+b`` is the composition one of the two builds (:meth:`Method.compose`); a pair that
    does not compose raises ``ConfigError`` with the reason."""
    load_plugins()
    if "+" in name:
        return _composed(name)
    if name not in _REGISTRY:
        raise UnknownNameError("method", name, sorted(_REGISTRY))
    return _REGISTRY[name]


def _composed(name: str) -> type[Method]:
    parts = name.split("+")
    if len(parts) != 2:
        raise ConfigError(f"--method {name}: compose two methods (a+b), not {len(parts)}")
    first, second = (get_method_class(part) for part in parts)
    for outer, inner in ((first, second), (second, first)):
        composed = outer.compose(inner)
        if composed is not None:
            return composed
    raise ConfigError(
        f"--method {name}: these methods do not compose (each changes the model or the "
        "training loop its own way); composable: accumulate+M and facto+M for a method M that "
        "trains with the default trainer"
    )


def composed_options(outer: type[Method], inner: type[Method]) -> type:
    """The ``Options`` dataclass of ``outer+inner``: both methods' fields (a name both take is
    refused with ``ConfigError``), validated by both methods' checks."""
    own = {f.name for f in dataclasses.fields(outer.Options)}
    theirs = dataclasses.fields(inner.Options)
    clash = own & {f.name for f in theirs}
    if clash:
        raise ConfigError(f"--method {outer.name}+{inner.name}: both take {sorted(clash)}")
    # the types resolved in each method's own module (string annotations would be resolved
    # in the composition's)
    hints = {**typing.get_type_hints(outer.Options), **typing.get_type_hints(inner.Options)}
    # the help goes into the metadata: a class made at run time has no source to read it from
    helps = {
        name: help_text
        for cls in (outer, inner)
        for name, _, _, help_text in option_fields(cls.Options)
    }
    fields = []
    for f in (*dataclasses.fields(outer.Options), *theirs):
        metadata = {**f.metadata, "help": helps[f.name]}
        if f.default is not dataclasses.MISSING:
            made = dataclasses.field(default=f.default, metadata=metadata)
        else:
            made = dataclasses.field(default_factory=f.default_factory, metadata=metadata)
        fields.append((f.name, hints[f.name], made))

    def validate(options) -> None:
        for cls in (outer, inner):
            check = getattr(cls.Options, "validate", None)
            if check is not None:
                check(options)

    return dataclasses.make_dataclass(
        "Options", fields, namespace={"validate": validate, "__module__": inner.__module__}
    )


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    """An instance of method ``name`` with ``options`` (strings from the CLI are converted)."""
    cls = get_method_class(name)
    return cls(parse_options(cls.Options, options or {}, f"method {name!r}"))


def option_fields(options_cls: type) -> list[tuple[str, Any, Any, str]]:
    """``(name, type, default, help)`` of each field of an ``Options`` dataclass; the help is
    the field's ``metadata["help"]`` or the docstring written under the field."""
    hints = typing.get_type_hints(options_cls)
    docs = _field_docstrings(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        out.append((f.name, hints[f.name], default, f.metadata.get("help", docs.get(f.name, ""))))
    return out


@functools.cache
def _field_docstrings(cls: type) -> dict[str, str]:
    """The string literal under each annotated field of class ``cls``'s source, whitespace
    folded (empty when the source cannot be read or parsed: a class made at run time)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        ast.parse(source)
    except (OSError, TypeError, SyntaxError, ValueError):
        return {}
    body = ast.parse(source).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _convert(value: Any, kind: Any, where: str) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin in (list, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = args[0] if args else str
        converted = [
            _convert(v.strip() if isinstance(v, str) else v, item_type, where) for v in items
        ]
        return tuple(converted) if origin is tuple else converted
    if typing.get_origin(kind) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if kind in (int, float, str):
        try:
            result = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}") from None
        if kind is int and isinstance(value, float) and value != result:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return result
    return value


def parse_options(options_cls: type, values: dict[str, Any], owner: str = "method") -> Any:
    """Build ``options_cls`` from ``values`` (kebab- or snake-case keys, strings converted by field type)."""
    fields = {name: kind for name, kind, _, _ in option_fields(options_cls)}
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields and name + "_" in fields:
            name += "_"  # a Python keyword option (lambda) is spelled lambda_ in its dataclass
        if name not in fields:
            valid = ", ".join("--" + f.rstrip("_").replace("_", "-") for f in fields) or "none"
            raise ConfigError(f"{owner} has no option {key!r}; its options: {valid}")
        kwargs[name] = _convert(value, fields[name], f"{owner} option {key!r}")
    try:
        options = options_cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{owner}: {exc}") from None
    validate = getattr(options, "validate", None)
    if callable(validate):
        validate()
    return options


@register_method
class Baseline(Method):
    """Plain backpropagation: every activation kept, autograd's backward."""

    name = "baseline"
    user_model = "any module"
    description = "plain backpropagation (the reference every method is compared against)"
