"""Configuration: load, validate against the schema (workflow/schemas/config.schema.yaml), fill defaults.

The Snakefile and every ``python -m dfnas.<stage>`` share this code, so a wrong key or value is
reported the same way everywhere: one line that names the key.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import jsonschema
import yaml

from dfnas.errors import DfnasError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _packaged(name: str, in_repository: str) -> Path:
    """A file the wheel carries in dfnas/defaults/ (setup.py copies it there); in a checkout, and in
    an editable install, the repository's one copy."""
    packaged = Path(__file__).resolve().parent / "defaults" / name
    return packaged if packaged.is_file() else REPO_ROOT / in_repository


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, except that every number in exponent notation (``1e-4``, ``1.5e3``:
    YAML 1.2 and JSON read them as numbers, YAML 1.1 without a dot or an exponent sign as text) is a
    float, so that ``lr: 1e-4`` in a config and the JSON that Snakemake passes to a job mean a
    number; and a key given twice in one mapping is an error, not the last one silently winning."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *anchor' may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class says so
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                            f"key {key!r} given twice", key_node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
                              list("-+0123456789."))


def read_yaml(text: str):
    """YAML (or JSON) text as Python values, with `_Loader`'s numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


SCHEMA_PATH = _packaged("config.schema.yaml", "workflow/schemas/config.schema.yaml")
DEFAULT_CONFIG = _packaged("config.yaml", "config.yaml")


def load_schema(path=SCHEMA_PATH) -> dict:
    try:
        return read_yaml(Path(path).read_text())
    except FileNotFoundError:
        raise DfnasError(f"config schema not found at {path}: reinstall dfnas (pip install <checkout or wheel>)") from None


def _coerce(value, schema: dict):
    """A string where the schema wants no string, read as YAML: Snakemake keeps the values nested in
    ``--config 'synthesis={shards: 1}'`` as text ('1'), while top-level ``--config seed=1`` is a number.
    A whole float where the schema wants an integer (``steps: 1e3``) becomes that integer."""
    types = schema.get("type") if isinstance(schema, dict) else None
    types = [types] if isinstance(types, str) else (types or [])
    if isinstance(value, str) and types and "string" not in types:
        try:
            parsed = read_yaml(value)
        except yaml.YAMLError:
            return value
        value = value if isinstance(parsed, str) else parsed
    if isinstance(value, float) and value.is_integer() and "integer" in types and "number" not in types:
        return int(value)
    return value


def _with_defaults(validator_class):
    """A validator that also writes each property's ``default`` into the instance, recursively, and
    reads text values given for numbers, booleans, lists and mappings (`_coerce`)."""
    validate_properties = validator_class.VALIDATORS["properties"]
    validate_items = validator_class.VALIDATORS["items"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
                elif key in instance:
                    instance[key] = _coerce(instance[key], sub)
        yield from validate_properties(validator, properties, instance, schema)

    def coerce_items(validator, items, instance, schema):
        if isinstance(instance, list) and isinstance(items, dict):
            instance[:] = [_coerce(item, items) for item in instance]
        yield from validate_items(validator, items, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults, "items": coerce_items})


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path)


def _describe(error) -> str:
    """One line for a jsonschema error that names the offending key."""
    path = _key_path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = ".".join(filter(None, [path, extra[0] if extra else "?"]))
        return f"config key '{key}' is not a known key; allowed here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key '{path}': {error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern":
        hint = error.schema.get("description", "").strip()
        return f"config key '{path}': {error.instance!r} is not a valid value" + (f" ({hint})" if hint else "")
    return f"config key '{path or '(top level)'}': {error.message}"


def non_finite(obj, path: str = "") -> str | None:
    """The key path of the first NaN or infinite number in ``obj`` (YAML reads .nan and .inf), or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = non_finite(value, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def validate_config(config: dict, schema: dict | None = None) -> dict:
    """Validate ``config`` in place (defaults filled in) and return it; raise `DfnasError` on the first problem."""
    schema = schema or load_schema()
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise DfnasError(f"config must be a mapping of keys to values, got {type(config).__name__}")
    bad = non_finite(config)
    if bad:
        raise DfnasError(f"config key '{bad}': not a finite number (NaN or infinity)")
    validator = _with_defaults(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), _key_path(e)))
    if errors:
        raise DfnasError(_describe(jsonschema.exceptions.best_match(errors)))
    check_consistency(config)
    return config


# [min, max] pairs: a crop's area fraction and aspect ratio, SPOS's training FLOPs range.
RANGE_KEYS = ("data.crop_scale", "synthesis.region.scale", "synthesis.region.ratio", "soft_labels.scale",
              "soft_labels.ratio", "quality.student.scale", "search.spos.train_flops")


def check_consistency(config: dict) -> None:
    """What the schema cannot say: a url: teacher has its checksum, every shard gets images, every
    synthetic search or fidelity source is a synthesized variant, a fidelity stage ranks at least 4
    architectures, several GPUs per retrain or SPOS job come with a device that can have them, the
    student's variant is searched on, ranges run from min to max, the search spaces' per-stage
    lists agree in length, and a DARTS warm-up leaves architecture steps."""
    teacher = config["teacher"]
    if teacher["source"].startswith("url:") and not teacher["sha256"]:
        raise DfnasError(f"config key 'teacher.sha256': required for a url: teacher ({teacher['source']}), so that "
                         "the download is checked before anything is written; give the file's SHA-256")
    synthesis = config["synthesis"]
    if synthesis["images_per_round"] < synthesis["shards"]:
        raise DfnasError(f"config key 'synthesis.images_per_round': {synthesis['images_per_round']} images a round "
                         f"cannot fill {synthesis['shards']} shards (each needs at least one); raise it or lower "
                         "synthesis.shards")
    variants = config["synthesis"]["variants"]
    for source in config["search"]["sources"]:
        if source not in ("natural", "random") and source not in variants:
            raise DfnasError(f"config key 'search.sources': {source!r} is not in synthesis.variants {variants}")
    fidelity = config["fidelity"]
    if 0 < fidelity["architectures"] < 4:
        raise DfnasError(f"config key 'fidelity.architectures': {fidelity['architectures']} architectures cannot be "
                         "ranked; use 0 (no fidelity stage) or at least 4")
    for source in fidelity["sources"] or []:
        if source != "natural" and source not in variants:
            raise DfnasError(f"config key 'fidelity.sources': {source!r} is not in synthesis.variants {variants}")
    gpu_keys = [("retrain.gpus", config["retrain"]["gpus"])] + [
        (f"search.{name}.gpus", config["search"][name]["gpus"]) for name in ("darts", "spos", "proxyless")]
    for key, gpus in gpu_keys:
        if gpus > 1 and (config["device"] == "cpu" or config["device"].startswith("cuda:")):
            raise DfnasError(f"config key '{key}': {gpus} GPUs per job need device auto or cuda, not "
                             f"{config['device']!r} (one device)")
    student = config["student"]["variant"]
    if student is not None and student not in config["search"]["sources"]:
        raise DfnasError(f"config key 'student.variant': {student!r} is not in search.sources "
                         f"{config['search']['sources']}; the student trains the architectures searched on it")
    for key in RANGE_KEYS:
        section = config
        for part in key.split("."):
            section = section.get(part) if isinstance(section, dict) else None
        if section is not None and section[0] > section[1]:
            raise DfnasError(f"config key '{key}': {section} is a [min, max] range; the first is the larger")
    spos, proxyless, darts = (config["search"][name] for name in ("spos", "proxyless", "darts"))
    lengths = {k: len(spos[k]) for k in ("stage_blocks", "widths")}
    if len(set(lengths.values())) > 1:
        raise DfnasError(f"config key 'search.spos.widths': {lengths['widths']} widths for "
                         f"{lengths['stage_blocks']} stages (search.spos.stage_blocks); give one per stage")
    lengths = {k: len(proxyless[k]) for k in ("stage_blocks", "widths", "strides")}
    if len(set(lengths.values())) > 1:
        raise DfnasError("config key 'search.proxyless.stage_blocks': stage_blocks, widths and strides list one "
                         f"value per stage, but hold {lengths['stage_blocks']}, {lengths['widths']} and "
                         f"{lengths['strides']}")
    if darts["multiplier"] > darts["steps"]:
        raise DfnasError(f"config key 'search.darts.multiplier': a cell concatenates its last {darts['multiplier']} "
                         f"nodes but has {darts['steps']} (search.darts.steps)")
    if darts["iterations"] is None and darts["arch_warmup_epochs"] >= darts["epochs"]:
        raise DfnasError(f"config key 'search.darts.arch_warmup_epochs': {darts['arch_warmup_epochs']} warm-up epochs "
                         f"of {darts['epochs']} (search.darts.epochs) leave the architecture no step; lower it")


def read_config_file(path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DfnasError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DfnasError(f"config file {path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at position "
                         f"{exc.start}); save it as UTF-8") from None
    try:
        data = read_yaml(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DfnasError(f"config file {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DfnasError(f"config file {path}: holds a {type(data).__name__}, not a mapping of config keys")
    return data


def load_config(path=None, json_text: str | None = None, overrides: dict | None = None) -> dict:
    """Config from a file and/or a JSON string (later wins per top-level section), validated.

    Without either, the embedded default (``config.yaml`` beside the Snakefile) is used.
    """
    config: dict = {}
    if path is None and json_text is None:
        path = DEFAULT_CONFIG
    if path is not None:
        config.update(read_config_file(path))
    if json_text is not None:
        try:
            given = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise DfnasError(f"--config-json: not valid JSON ({exc.msg} at character {exc.pos})") from None
        if not isinstance(given, dict):
            raise DfnasError(f"--config-json: holds a {type(given).__name__}, not a JSON object of config keys")
        config.update(given)
    if overrides:
        config.update(overrides)
    return validate_config(config)
