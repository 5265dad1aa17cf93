"""A configured job with its live plugin instances."""

from __future__ import annotations

from dataclasses import dataclass

from teckochecker.config.validate import JobDefinition
from teckochecker.plugin_api import Action, PluginContext, Source
from teckochecker.state.store import JobPlan, PlannedAction


@dataclass
class JobRuntime:
    definition: JobDefinition
    source: Source
    actions: dict[int, Action]

    @property
    def name(self) -> str:
        return self.definition.name

    @classmethod
    def build(cls, definition: JobDefinition, context: PluginContext) -> JobRuntime:
        source = definition.source.cls(definition.source.options, context)
        actions = {a.index: a.cls(a.options, context) for a in definition.actions}
        return cls(definition, source, actions)

    def plan(self) -> JobPlan:
        return JobPlan(self.name, self.definition.fingerprint, self.definition.source.targets, self.definition.deadline)

    def planned_actions(self) -> list[PlannedAction]:
        return [
            PlannedAction(a.index, a.type, self.actions[a.index].target_key, a.when) for a in self.definition.actions
        ]

    async def aclose(self) -> None:
        await self.source.aclose()
        for action in self.actions.values():
            await action.aclose()
