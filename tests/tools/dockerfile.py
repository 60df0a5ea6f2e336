"""A small Dockerfile reader for tests (no Docker needed): stages, instructions, and what a target runs.

    df = Dockerfile.read("Dockerfile")
    df.stage("predictor").entrypoint          # ["python", "-m", "predictor"]
    df.resolved("operator", "USER")           # the last USER along the operator target's FROM chain
    df.chain("predictor", {"TORCH_FLAVOR": "cpu"})  # FROM torch-${TORCH_FLAVOR}: global ARGs substituted

Handles comments, line continuations, ``FROM x AS name`` chains, JSON (exec) and shell forms. Enough for
the project's own Dockerfile; not a full BuildKit parser (no heredocs, no escape directive).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  # upper case
    value: str  # the rest of the line, continuations joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array form (``["a", "b"]``), or None for the shell form."""
        text = self.value.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except ValueError:
                return None
            if isinstance(parsed, list) and all(isinstance(item, str) for item in parsed):
                return parsed
        return None

    def flags_and_args(self) -> tuple[dict[str, str], list[str]]:
        """``COPY --from=x --chown=1:0 a b`` → ({"from": "x", "chown": "1:0"}, ["a", "b"])."""
        flags: dict[str, str] = {}
        args: list[str] = []
        for word in shlex.split(self.value):
            if word.startswith("--") and not args:
                key, _, val = word[2:].partition("=")
                flags[key] = val
            else:
                args.append(word)
        return flags, args


@dataclass
class Stage:
    name: str
    base: str
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword.upper()]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    @property
    def entrypoint(self) -> list[str] | None:
        inst = self.last("ENTRYPOINT")
        return None if inst is None else inst.exec_form()

    @property
    def cmd(self) -> list[str] | None:
        inst = self.last("CMD")
        return None if inst is None else inst.exec_form()

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of this stage alone (later ones win)."""
        out: dict[str, str] = {}
        for inst in self.all("ENV"):
            words = shlex.split(inst.value, posix=True)
            if words and "=" not in words[0]:  # legacy "ENV key value"
                out[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, val = word.partition("=")
                out[key] = val
        return out

    def run_text(self) -> str:
        return "\n".join(i.value for i in self.all("RUN"))


@dataclass
class Dockerfile:
    path: Path
    global_args: list[Instruction]
    stages: list[Stage]

    @classmethod
    def read(cls, path: str | Path) -> Dockerfile:
        path = Path(path)
        logical: list[tuple[int, str]] = []
        buffer, start = "", 0
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            stripped = raw.strip()
            if not buffer and (not stripped or stripped.startswith("#")):
                continue
            if buffer and stripped.startswith("#"):  # comment lines inside a continuation are dropped
                continue
            if not buffer:
                start = number
            if stripped.endswith("\\"):
                buffer += stripped[:-1] + " "
                continue
            logical.append((start, buffer + stripped))
            buffer = ""
        if buffer:
            logical.append((start, buffer))

        global_args: list[Instruction] = []
        stages: list[Stage] = []
        for line, text in logical:
            keyword, _, value = text.partition(" ")
            inst = Instruction(keyword.upper(), value.strip(), line)
            if inst.keyword == "FROM":
                words = value.split()
                words = [w for w in words if not w.startswith("--")]
                name = words[2] if len(words) >= 3 and words[1].lower() == "as" else str(len(stages))
                stages.append(Stage(name=name, base=words[0], index=len(stages)))
            elif stages:
                stages[-1].instructions.append(inst)
            else:
                global_args.append(inst)
        return cls(path=path, global_args=global_args, stages=stages)

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r} in {self.path} (stages: {[s.name for s in self.stages]})")

    def arg_defaults(self, build_args: dict[str, str] | None = None) -> dict[str, str]:
        """The ARGs declared before the first FROM, with their defaults, overridden by ``build_args``."""
        values: dict[str, str] = {}
        for inst in self.global_args:
            if inst.keyword == "ARG":
                key, _, default = inst.value.partition("=")
                values[key.strip()] = default.strip().strip('"')
        return {**values, **{k: v for k, v in (build_args or {}).items() if k in values}}

    def base_of(self, stage: Stage, build_args: dict[str, str] | None = None) -> str:
        """``stage``'s FROM with global ARGs substituted (``FROM torch-${TORCH_FLAVOR}`` → ``torch-cuda``)."""
        args = self.arg_defaults(build_args)
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), stage.base)

    def chain(self, name: str, build_args: dict[str, str] | None = None) -> list[Stage]:
        """The stage and the stages it is built FROM, base first."""
        out: list[Stage] = []
        names = {s.name for s in self.stages}
        current: Stage | None = self.stage(name)
        while current is not None:
            out.insert(0, current)
            base = self.base_of(current, build_args)
            current = self.stage(base) if base in names else None
        return out

    def resolved(self, name: str, keyword: str, build_args: dict[str, str] | None = None) -> Instruction | None:
        """The effective (last) ``keyword`` instruction of target ``name``, inherited along its chain."""
        found = None
        for stage in self.chain(name, build_args):
            found = stage.last(keyword) or found
        return found

    def resolved_env(self, name: str, build_args: dict[str, str] | None = None) -> dict[str, str]:
        env: dict[str, str] = {}
        for stage in self.chain(name, build_args):
            env.update(stage.env())
        return env


def dockerignore_patterns(root: str | Path) -> list[str]:
    path = Path(root) / ".dockerignore"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def in_build_context(relpath: str, patterns: list[str]) -> bool:
    """Whether ``relpath`` is sent in the build context (.dockerignore semantics: last match wins, ! re-includes;
    a directory pattern covers what is under it)."""
    relpath = relpath.strip("/")
    included = True
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        candidates = prefixes if not pat.startswith("**/") else prefixes + [p.split("/")[-1] for p in prefixes]
        pat_plain = pat[3:] if pat.startswith("**/") else pat
        if any(fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, pat_plain) for c in candidates):
            included = negate
    return included
