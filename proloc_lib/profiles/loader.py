"""Profiles: ``configs/<name>.yaml`` (or a path), following ``extends:``, every key checked by the schema.

A profile is named on the command line by its name in ``configs/`` (letters, digits, ``._-``) or by
the path of a file (ending in .yaml or .yml). Its outputs go to folders named after its own
``profile:`` key (not one inherited through ``extends``), else after the file's stem; that name is
checked to be one folder name (``paths.check_name``).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml

from proloc_lib.core.paths import CONFIG_DIR, PROJECT_ROOT, BadName, check_name
from proloc_lib.profiles.schema import ProfileError, UnknownProfile, describe_value, validate_profile
from proloc_lib.training.plan import Plan


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _shown(path: Path) -> str:
    """A profile path as the user would write it: relative to the project or the cwd when inside."""
    for base in (PROJECT_ROOT, Path.cwd()):
        try:
            return str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(path)


def profile_path(name: str | os.PathLike) -> Path:
    """``configs/<name>.yaml``, or ``name`` itself when it is a path to a .yaml/.yml file."""
    name = str(name)
    if name.endswith((".yaml", ".yml")):
        path = Path(name)
    else:
        try:
            path = CONFIG_DIR / f"{check_name(name)}.yaml"
        except BadName as exc:
            raise UnknownProfile(str(exc)) from None
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UnknownProfile(f"no profile '{name}': {_shown(path)} {what}; known profiles: {', '.join(known)}")
    return path


# A profile holds a few hundred values; aliases that expand past this many are a "billion laughs"
# file (nested anchors), refused before anything walks the expanded values.
MAX_VALUES = 100_000
MAX_DEPTH = 64


class _ProfileLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last, silently)."""

    shown = "profile"

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue          # '<<' merges may be overridden by the mapping's own keys
                key = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise ProfileError(f"{self.shown}: key '{_short(key_node.value)}' given twice in one mapping "
                                       f"(lines {seen[key]} and {line}); YAML would keep only the last: remove one")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _expanded_size(root, shown: str) -> int:
    """Values the node graph holds once its aliases are expanded (each node's size counted once)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ProfileError(f"{shown}: line {node.start_mark.line + 1}: a YAML alias refers to a value that "
                               "contains it (a recursive anchor); write the value out")
        if depth > MAX_DEPTH:
            raise ProfileError(f"{shown}: line {node.start_mark.line + 1}: values nested more than {MAX_DEPTH} "
                               "levels deep")
        active.add(key)
        if isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            n = 1
        active.discard(key)
        sizes[key] = n = min(n, MAX_VALUES + 1)   # capped: the sum cannot grow without bound either
        if n > MAX_VALUES:
            raise ProfileError(f"{shown}: line {node.start_mark.line + 1}: its YAML aliases expand to more than "
                               f"{MAX_VALUES} values (nested anchors, a 'billion laughs'); write the values out")
        return n

    return size(root, 0)


def _parse(text: str, shown: str):
    loader = _ProfileLoader(text)
    loader.shown = shown
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, shown)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict:
    try:
        cfg = _parse(path.read_text(encoding="utf-8"), _shown(path))
    except RecursionError:
        raise ProfileError(f"{_shown(path)}: values nested too deeply to read") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{_shown(path)}: not a UTF-8 text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ProfileError(f"{_shown(path)}: not valid YAML{where}: {problem}") from None
    except OSError as exc:
        raise ProfileError(f"{_shown(path)}: cannot read ({exc.strerror or exc})") from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise ProfileError(f"{_shown(path)}: a profile is a mapping of keys (profile, data, training, ...), "
                           f"got {type(cfg).__name__}")
    return cfg


def _origins(cfg: dict, file: str, prefix: tuple = ()) -> dict:
    """Every key path of ``cfg`` -> the file that set it (for errors that name the right file)."""
    out = {}
    for k, v in cfg.items():
        out[prefix + (k,)] = file
        if isinstance(v, dict):
            out.update(_origins(v, file, prefix + (k,)))
    return out


def _load_chain(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(_shown(p) for p in (*chain, real))
        raise ProfileError(f"{_shown(path)}: 'extends' makes a loop ({loop})")
    cfg = _read_yaml(path)
    origins = _origins(cfg, _shown(path))
    if "extends" in cfg:
        parent = cfg["extends"]
        if not isinstance(parent, str) or not parent:
            raise ProfileError(f"{_shown(path)}: 'extends' must name a profile (e.g. extends: demo), "
                               f"got {describe_value(parent)}")
        beside = path.parent / (parent if parent.endswith((".yaml", ".yml")) else f"{parent}.yaml")
        try:  # a profile beside this file first (user profiles kept together), then configs/
            parent_path = beside if beside.is_file() else profile_path(parent)
        except UnknownProfile as exc:
            raise ProfileError(f"{_shown(path)}: extends: {exc}") from None
        base, base_origins = _load_chain(parent_path, (*chain, real))
        cfg = _merge(base, {k: v for k, v in cfg.items() if k != "extends"})
        origins = {**base_origins, **origins}
    return cfg, origins


class Profile(dict):
    """A checked profile: the merged YAML as a mapping (what manifests record), with its ``name``,
    the ``path`` it was read from and its training ``plan``, expanded once by the schema check."""

    def __init__(self, cfg: dict, *, path: Path, plan: Plan):
        super().__init__(cfg)
        self.path, self.plan = path, plan

    @property
    def name(self) -> str:
        return self["profile"]


def profile_reference(cfg: Profile) -> str:
    """How a command line names ``cfg``: its name when it is ``configs/<name>.yaml``, else its file's path."""
    path = Path(cfg.path)
    try:
        if path.resolve() == (CONFIG_DIR / f"{path.stem}.yaml").resolve():
            return path.stem
    except OSError:
        pass
    return str(path.resolve()) if path.exists() else str(path)


def _named(cfg: dict, name, *, file: str) -> None:
    """Set ``cfg['profile']`` to ``name`` once checked to be one folder name."""
    if not isinstance(name, str):
        raise ProfileError(f"{file}: profile: expected a name (letters, digits, '._-'), got {name!r}")
    try:
        cfg["profile"] = check_name(name)
    except BadName as exc:
        raise ProfileError(f"{file}: profile: {exc}") from None


def load_profile(name: str | os.PathLike) -> Profile:
    """Read ``configs/<name>.yaml`` (or a path), following ``extends:``, checked against the schema.

    Every key, nested ones included, is checked before any work (``profiles.schema``): an
    unknown or misspelt key, a wrong type, a loop through ``extends`` raise ``ProfileError``,
    one line naming the key, the file that set it and the allowed keys.
    """
    path = profile_path(name)
    cfg, origins = _load_chain(path, ())
    cfg.pop("extends", None)
    own = _read_yaml(path).get("profile")     # the file's own name; a parent's is not inherited
    _named(cfg, own if own is not None else path.stem, file=_shown(path))
    plan = validate_profile(cfg, file=_shown(path), origins=origins)
    return Profile(cfg, path=path, plan=plan)


def profile_from_dict(cfg: dict, *, name: str) -> Profile:
    """A profile given as a mapping (made in code rather than a file), checked like a file's."""
    cfg = _merge({}, cfg)
    _named(cfg, cfg.get("profile", name), file=f"profile '{name}'")
    plan = validate_profile(cfg, file=f"profile '{name}'")
    return Profile(cfg, path=Path(f"<{name}>"), plan=plan)
