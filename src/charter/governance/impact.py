"""What depends on what in a project: the graph behind blast radius and impact queries.

Nodes are named ``kind:name``: ``system:crm``, ``event:crm/deal.closed``,
``entity:order``, ``field:order.status``, ``mapping:crm-deal-to-order@1``,
``integration:deal-to-erp-order``, ``process:order-to-cash``. An edge runs
from a node to what a change of it can break: an event to the mappings,
integrations and processes that read it, a canonical field to the mappings
that read it, a mapping to the integrations that use it, an integration to
its target systems, a system to the processes that call it. Every node has
the team that owns it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from charter.catalog import Project
from charter.engine.spec import walk

KINDS = ("system", "event", "entity", "field", "mapping", "integration", "process", "team")


@dataclass(frozen=True)
class Affected:
    node: str
    hops: int
    owner: str | None
    via: str | None  # the node one hop nearer the change

    @property
    def kind(self) -> str:
        return self.node.split(":", 1)[0]

    @property
    def name(self) -> str:
        return self.node.split(":", 1)[1]

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "kind": self.kind,
            "name": self.name,
            "hops": self.hops,
            "owner": self.owner,
            "via": self.via,
        }


@dataclass
class Graph:
    edges: dict[str, set[str]] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def add(self, source: str, target: str) -> None:
        self.edges.setdefault(source, set()).add(target)
        self.edges.setdefault(target, set())

    def node(self, name: str, owner: str | None) -> None:
        self.edges.setdefault(name, set())
        if owner is not None:
            self.owners.setdefault(name, owner)

    def __contains__(self, node: object) -> bool:
        return node in self.edges

    def impact(self, starts: list[str]) -> list[Affected]:
        """Every node reachable from ``starts`` (hop 0), nearest first, then by name."""
        seen: dict[str, Affected] = {}
        queue: deque[str] = deque()
        for start in starts:
            if start in self.edges and start not in seen:
                seen[start] = Affected(start, 0, self.owners.get(start), None)
                queue.append(start)
        while queue:
            node = queue.popleft()
            for after in sorted(self.edges[node]):
                if after not in seen:
                    seen[after] = Affected(after, seen[node].hops + 1, self.owners.get(after), node)
                    queue.append(after)
        return sorted(seen.values(), key=lambda a: (a.hops, a.node))

    def suggestions(self, node: str) -> list[str]:
        """Known nodes that look like ``node``, for a 'did you mean' in an error."""
        kind, _, name = node.partition(":")
        same = [n for n in self.edges if n.startswith(kind + ":")]
        close = [n for n in same if name and (name in n or n.split(":", 1)[1] in name)]
        return sorted(close or same)[:8]


def schema_fields(schema: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of the properties a JSON Schema declares (objects only, 6 levels)."""
    if not isinstance(schema, dict) or depth > 6:
        return []
    found: list[str] = []
    for name, sub in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        found.append(path)
        found += schema_fields(sub, path + ".", depth + 1)
        if isinstance(sub, dict) and isinstance(sub.get("items"), dict):
            found += schema_fields(sub["items"], path + ".", depth + 1)
    return found


def _read_paths(rules: dict[str, Any]) -> set[str]:
    """The source paths a mapping's rules read with ``from`` (lists read item by item)."""
    found: set[str] = set()
    for rule in rules.values():
        source = getattr(rule, "from_", None)
        if source:
            found.add(source.split("[", 1)[0])
        each = getattr(rule, "each", None)
        if each:
            found |= {f"{source}.{p}" if source else p for p in _read_paths(each)}
    return found


def build(project: Project) -> Graph:
    """The dependency graph of ``project``."""
    graph = Graph()
    for name in project.teams:
        graph.node(f"team:{name}", name)
    for name, system in project.systems.items():
        graph.node(f"system:{name}", system.owner)
        for event in system.events:
            graph.node(f"event:{name}/{event}", system.owner)
            graph.add(f"system:{name}", f"event:{name}/{event}")
    for (name, _version), entity in sorted(project.entities.items()):
        graph.node(f"entity:{name}", entity.owner)
        for path in schema_fields(entity.schema_):
            top = path.split(".", 1)[0]
            record = entity.fields.get(path) or entity.fields.get(top)
            sor = record.system_of_record if record else entity.system_of_record
            owner = project.systems[sor].owner if sor in project.systems else entity.owner
            graph.node(f"field:{name}.{path}", owner)
            graph.add(f"entity:{name}", f"field:{name}.{path}")
    for (name, version), mapping in sorted(project.mappings.items()):
        node = f"mapping:{name}@{version}"
        src, dst = mapping.source, mapping.target
        shaped: str | None = None
        if dst.entity and (dst.entity, dst.version) in project.entities:
            shaped = project.entities[(dst.entity, dst.version or 1)].owner
        elif dst.system in project.systems:
            shaped = project.systems[dst.system].owner
        graph.node(node, shaped)
        if src.form == "event":
            graph.add(f"event:{src.system}/{src.event}", node)
        elif src.form == "entity":
            for path in sorted(_read_paths(mapping.fields)):
                key = f"field:{src.entity}.{path}"
                graph.add(key if key in graph else f"entity:{src.entity}", node)
        if dst.form == "entity":
            for output in mapping.fields:
                key = f"field:{dst.entity}.{output}"
                if key in graph:
                    graph.add(node, key)
        elif dst.form == "payload" and dst.system in project.systems:
            graph.add(node, f"system:{dst.system}")
    for name, integration in sorted(project.integrations.items()):
        node = f"integration:{name}"
        graph.node(node, integration.owner)
        origin = integration.source
        graph.add(f"event:{origin.system}/{origin.event}", node)
        graph.add(f"mapping:{integration.mapping.name}@{integration.mapping.version}", node)
        graph.add(f"entity:{integration.entity.name}", node)
        for goal in integration.targets:
            graph.add(f"mapping:{goal.mapping.name}@{goal.mapping.version}", node)
            graph.add(node, f"system:{goal.system}")
    for (name, _version), process in sorted(project.processes.items()):
        node = f"process:{name}"
        graph.node(node, process.owner)
        for trigger in process.triggers:
            if trigger.event is not None:
                graph.add(f"event:{trigger.event.system}/{trigger.event.type}", node)
        for step in walk(process.steps):
            if step.call is not None:
                graph.add(f"system:{step.call.system}", node)
            if step.wait is not None and step.wait.event is not None:
                match = step.wait.event
                graph.add(f"event:{match.system}/{match.type}", node)
    return graph


def teams(affected: list[Affected]) -> dict[str, int]:
    """Owning teams of the affected nodes, each with its nearest hop count."""
    found: dict[str, int] = {}
    for a in affected:
        if a.owner is not None:
            found[a.owner] = min(found.get(a.owner, a.hops), a.hops)
    return dict(sorted(found.items(), key=lambda t: (t[1], t[0])))
