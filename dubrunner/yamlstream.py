"""Reading YAML as a stream of parser events, one value at a time, with the line of every
value: a 100k-job manifest is read one job at a time, never as a whole tree."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import yaml

try:  # the C loader is an order of magnitude faster on large manifests
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # pragma: no cover - depends on how PyYAML was built
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself and of each of its values."""

    __slots__ = ("key_lines", "line")  # no __dict__: one made per job, 100k in a big manifest
    line: int
    key_lines: dict[Any, int]


class LineList(list[Any]):
    __slots__ = ("item_lines", "line")
    line: int
    item_lines: list[int]


ALLOWED_TAGS = frozenset(
    {
        None,
        "!",
        "tag:yaml.org,2002:str",
        "tag:yaml.org,2002:int",
        "tag:yaml.org,2002:bool",
        "tag:yaml.org,2002:null",
        "tag:yaml.org,2002:float",
        "tag:yaml.org,2002:map",
        "tag:yaml.org,2002:seq",
    }
)


class YamlProblem(Exception):
    """Something in the document that cannot be read as a manifest value, at a line."""

    def __init__(self, line: int | None, text: str) -> None:
        self.line = line
        self.text = text
        super().__init__(text)


class EventReader:
    """Builds values from the parser's event stream, with line numbers, without keeping the node
    tree: a 100k-job manifest is read one job at a time. Aliases are shared, never copied (an
    alias bomb stays small), duplicate keys and non-standard tags are errors."""

    def __init__(self, text: str) -> None:
        # The loader's own get_event, as yaml.parse calls it but without its generator between:
        # a call less on each of the ~8 events of a job. (None once the stream has ended, which
        # no reading here goes past: the parser closes what it opens, or raises.) The loader is
        # made at the first read, as yaml.parse makes it: what it refuses as it is made (the
        # pure-Python reader checks every character then) is a YAML error of a read.
        self.text = text
        self.get_event: Callable[[], yaml.Event] = self._first_event
        self.anchors: dict[str, Any] = {}
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()
        # First characters for which the resolver might read a plain scalar as not-text.
        self.resolved_starts = frozenset(
            c for c in self.resolver.yaml_implicit_resolvers if isinstance(c, str)
        )

    def _first_event(self) -> yaml.Event:
        self.get_event = cast(Callable[[], yaml.Event], _BaseLoader(self.text).get_event)
        return self.get_event()

    def next(self) -> yaml.Event:
        ev: yaml.Event | None = self.get_event()
        if ev is None:  # pragma: no cover - the parser ends every stream it starts
            raise StopIteration
        return ev

    def scalar(self, ev: yaml.ScalarEvent) -> Any:
        """A scalar that may not be text: tagged, or plain and starting as a non-text might
        (value() takes the others, the usual keys, URLs and ids, as text)."""
        tag = ev.tag if ev.tag not in (None, "!") else None
        if tag is None:
            implicit = (ev.implicit[0], ev.implicit[1]) if ev.tag is None else (False, True)
            tag = self.resolver.resolve(yaml.ScalarNode, ev.value, implicit)  # type: ignore[no-untyped-call]
        if tag == "tag:yaml.org,2002:str":
            return ev.value
        if tag in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
            try:
                node = yaml.ScalarNode(tag, ev.value, None, None, ev.style)
                return self.constructor.construct_object(node)
            except (yaml.YAMLError, ValueError, KeyError):  # KeyError: `!!bool maybe`
                raise YamlProblem(
                    line_of_event(ev), f"{ev.value[:40]!r} is not a valid {tag[18:]}"
                ) from None
        if tag == "tag:yaml.org,2002:null":
            return None
        return ev.value  # timestamps and the like: plain text here

    def value(self, ev: yaml.Event, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise YamlProblem(
                line_of_event(ev), f"the YAML is nested more than {MAX_DEPTH} levels deep"
            )
        if ev.__class__ is _ScalarEvent and ev.tag is None:
            text = ev.value
            if ev.style or (text and text[0] not in self.resolved_starts):
                # Quoted, or no implicit type starts so: text (the usual key, URL or id), fast.
                if ev.anchor:
                    self.anchors[ev.anchor] = text
                return text
        if isinstance(ev, yaml.AliasEvent):
            if ev.anchor not in self.anchors:
                raise YamlProblem(line_of_event(ev), f"unknown alias *{ev.anchor}")
            return self.anchors[ev.anchor]
        tag = getattr(ev, "tag", None)
        if tag not in ALLOWED_TAGS:
            raise YamlProblem(
                line_of_event(ev), f"the tag {str(tag)[:60]} is not allowed in a manifest"
            )
        result: Any
        if isinstance(ev, yaml.ScalarEvent):
            result = self.scalar(ev)
        elif isinstance(ev, yaml.SequenceStartEvent):
            result = LineList()
            result.line = line_of_event(ev)
            result.item_lines = []
            while not isinstance(item := self.next(), yaml.SequenceEndEvent):
                result.item_lines.append(line_of_event(item))
                result.append(self.value(item, depth + 1))
        elif isinstance(ev, yaml.MappingStartEvent):
            result = self.mapping(ev, depth)
        else:  # pragma: no cover - the parser only yields the kinds above here
            raise YamlProblem(line_of_event(ev), f"unexpected YAML {type(ev).__name__}")
        anchor = getattr(ev, "anchor", None)
        if anchor:
            self.anchors[anchor] = result
        return result

    def items(self, end: type[yaml.Event]) -> Iterator[yaml.Event]:
        while not isinstance(ev := self.next(), end):
            yield ev

    def mapping(
        self,
        ev: yaml.Event,
        depth: int,
        special: Callable[[Any, yaml.Event], bool] | None = None,
    ) -> LineDict:
        data = LineDict()
        data.line = line_of_event(ev)
        key_lines: dict[Any, int] = {}
        data.key_lines = key_lines
        get_event, value_of = self.get_event, self.value
        while not isinstance(key_ev := get_event(), _MappingEndEvent):
            key = value_of(key_ev, depth + 1)
            try:
                hash(key)
            except TypeError:
                raise YamlProblem(
                    line_of_event(key_ev), "a mapping key must be a plain value"
                ) from None
            if key in data:
                raise YamlProblem(line_of_event(key_ev), f"duplicate key {show(key)}")
            value_ev = get_event()
            key_lines[key] = line_of_event(value_ev)
            if special is not None and special(key, value_ev):
                data[key] = None  # consumed by the caller as it streamed by
                continue
            value = value_of(value_ev, depth + 1)
            if key == "<<" and isinstance(value, LineDict):
                for k, v in value.items():
                    data.setdefault(k, v)
                    data.key_lines.setdefault(k, value.key_lines.get(k, data.line))
                del data.key_lines[key]
                continue
            data[key] = value
        return data


MAX_DEPTH = 50
_ScalarEvent = yaml.ScalarEvent  # looked up once: checked for each of a job's events
_MappingEndEvent = yaml.MappingEndEvent


def line_of_event(ev: yaml.Event) -> int:
    return int(ev.start_mark.line) + 1 if ev.start_mark is not None else 0


def show(value: object, width: int = 40) -> str:
    """A short, bounded rendering of a user value (never a full repr of a big structure)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return text if len(text) <= width else text[: width - 1] + "…"
    return type_name(value)


def type_name(value: object) -> str:
    return {
        type(None): "nothing",
        bool: "true/false",
        int: "a number",
        float: "a number",
        str: "text",
        LineDict: "a mapping",
        LineList: "a list",
    }.get(type(value), type(value).__name__)
