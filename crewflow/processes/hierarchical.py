"""The hierarchical process: a manager plans the crew's tasks as steps for its workers, the steps
run on the shared dispatcher, the manager reviews the results and writes the final answer.

1. **Plan.** The manager answers ``ctx.ask("plan", ...)`` with a `Plan`: for every crew task, one
   or more steps, each with a ``worker`` (a role) and ``instructions``. Its JSON schema is built
   per crew: every crew task is a required property, workers and the earlier crew tasks a step
   may wait for (``after``) are enums, so a plan that fits the schema can run. A plan that does
   not (a model without native structured output) is asked for again with its problems listed
   (``plan.2``, ...), up to ``max_plan_retries`` times; then the run fails with `InvalidPlan`.
2. **Steps.** The steps become internal tasks (``research.1``, ``research.2``, ...) run by
   ``ctx.run_ready()``: one crew task's steps in order, crew tasks as their declared context
   (and the plan's ``after``) allow, side by side under ``max_concurrency`` and limits. Each
   crew task is delegated to its last step, whose output (under the task's ``output_model``)
   becomes the task's.
3. **Review.** The manager checks every crew task's output against its expected output
   (``review.1``): it accepts, or names tasks to redo with feedback. Their steps run again
   (``research.1.r1``, ...) with the feedback, as do the crew tasks that depend on them. At most
   ``max_review_rounds`` reviews.
4. **Answer.** The manager writes the final answer (``final_answer``): `CrewResult.output`.

Resume replays all of it: the plan, the reviews and the answer are recorded internal steps, so a
resumed run never asks for them again and never redoes a finished step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from crewflow._prompts import task_prompt
from crewflow.agent import Agent
from crewflow.exceptions import ConfigurationError, InvalidPlan
from crewflow.processes import PlanProblem, ProblemKind, Process
from crewflow.task import Task, literal_template

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pydantic import JsonValue

    from crewflow.graph import TaskGraph
    from crewflow.processes import ProcessContext
    from crewflow.task import TaskOutput

__all__ = ["Hierarchical", "Plan", "PlanStep", "Redo", "Review"]

M = TypeVar("M", bound=BaseModel)

MAX_STEPS = 10
"""The most steps a plan may give one crew task (a bound on what one plan can cost)."""


class PlanStep(BaseModel):
    """One step of a plan: who does it, what to do, and which earlier crew tasks it waits for."""

    model_config = ConfigDict(frozen=True)

    worker: str = Field(description="The role of the team member who does this step.")
    instructions: str = Field(description="What to do in this step, in a few sentences.")
    after: list[str] = Field(
        default_factory=list,
        description="Tasks listed before this one whose results this step needs, besides "
        "those the task already needs.",
    )


class Plan(RootModel[dict[str, list[PlanStep]]]):
    """A manager's plan: each crew task's name with its steps, in order (`CrewResult.plan`).

    Example:
        ```python
        Hierarchical(plan={"research": [{"worker": "Researcher", "instructions": "..."}],
                           "report": [{"worker": "Writer", "instructions": "..."}]})
        ```
    """

    model_config = ConfigDict(frozen=True)

    def __getitem__(self, task: str) -> list[PlanStep]:
        return self.root[task]

    @property
    def tasks(self) -> list[str]:
        """The crew tasks it plans, in its order."""
        return list(self.root)


class Redo(BaseModel):
    """A crew task the manager wants done again, and what to change."""

    task: str = Field(description="The name of the task to redo.")
    feedback: str = Field(description="What is wrong with its result and what to change.")


class Review(BaseModel):
    """A manager's review of the results: accept them, or redo some tasks."""

    accept: bool = Field(description="True when every result meets what its task expects.")
    redo: list[Redo] = Field(
        default_factory=list, description="When not accepted: the tasks to redo, with feedback."
    )


class Hierarchical(Process):
    """A manager plans the tasks as steps for the crew's agents, reviews the results, and
    answers.

    The crew's agents are its workers (unique roles; the manager is not one of them). Tasks
    need no agent: the manager assigns each step.

    Example:
        ```python
        crew = Crew(tasks=[research, report], agents=[researcher, writer],
                    process="hierarchical", manager="openai/gpt-4o")
        result = await crew.kickoff({"topic": "tidal power"})
        result.plan          # the manager's plan
        result.output        # its final answer
        result["report"]     # the last step of the report task, after review
        ```

    Args:
        manager: An `Agent`, or a model string for the catalogue's ``manager`` agent
            (default: that agent on the default model).
        max_review_rounds: Reviews of the results (each may ask for redos); 0 for none.
        max_plan_retries: How many times an unusable plan is asked for again.
        plan: A fixed plan instead of asking the manager (tests, reproducible runs).

    Raises:
        ConfigurationError: A bound below 0, or a plan that is not a `Plan`.
    """

    name: ClassVar[str] = "hierarchical"

    def __init__(
        self,
        manager: Agent | str | None = None,
        *,
        max_review_rounds: int = 1,
        max_plan_retries: int = 2,
        plan: Plan | Mapping[str, Any] | None = None,
    ) -> None:
        for label, value in (
            ("max_review_rounds", max_review_rounds),
            ("max_plan_retries", max_plan_retries),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{label} must be a whole number >= 0, not {value!r}")
        self._named_manager = manager is not None
        self.manager = _manager(manager)
        self.max_review_rounds = max_review_rounds
        self.max_plan_retries = max_plan_retries
        try:
            self.plan = (
                plan if plan is None or isinstance(plan, Plan) else Plan.model_validate(plan)
            )
        except ValidationError as exc:
            raise ConfigurationError(f"plan= is not a plan: {exc}") from None

    def __repr__(self) -> str:
        return f"Hierarchical(manager={self.manager.role!r})"

    def with_manager(self, manager: Agent | str) -> Hierarchical:
        if self._named_manager:
            raise ConfigurationError(
                "the manager is given twice, to Hierarchical(manager=...) and Crew(manager=...); "
                "give it once"
            )
        return Hierarchical(
            manager,
            max_review_rounds=self.max_review_rounds,
            max_plan_retries=self.max_plan_retries,
            plan=self.plan,
        )

    def default_agent(self) -> Agent:
        return self.manager

    def config(self) -> dict[str, JsonValue]:
        llm = self.manager.llm
        return {
            "manager": self.manager.role,
            "model": llm if isinstance(llm, str) or llm is None else getattr(llm, "model", ""),
            "max_review_rounds": self.max_review_rounds,
            "max_plan_retries": self.max_plan_retries,
            "plan": None if self.plan is None else self.plan.model_dump(mode="json"),
        }

    def validate(self, graph: TaskGraph) -> None:
        """No workflow features (conditions, routers, ...: how a manager's plan meets them is
        not designed yet), unique worker roles, at least one worker, a manager who is not one,
        and a fixed plan that fits the crew."""
        features = graph.workflow_features()
        if features:
            raise ConfigurationError(
                f"the hierarchical process cannot run a crew whose tasks use "
                f"{_and(features)}: a manager plans the work itself, and how its plan meets "
                f"{'these' if len(features) > 1 else 'this'} is not designed yet. Use "
                'process="parallel" or "sequential", or drop '
                f"{'them' if len(features) > 1 else 'it'}"
            )
        workers = graph.members
        if not workers:
            raise ConfigurationError(
                "a hierarchical crew needs workers: give the crew its agents, "
                "Crew(agents=[...]), or give its tasks agents; the manager assigns them the steps"
            )
        roles = [agent.role for agent in workers]
        for agent in workers:
            if agent.id == self.manager.id or agent.role == self.manager.role:
                raise ConfigurationError(
                    f"the manager ({self.manager.role!r}) is also one of the crew's workers; in "
                    "a hierarchical crew the manager plans and reviews, the workers do the steps"
                )
            if roles.count(agent.role) > 1:
                raise ConfigurationError(
                    f"two workers have the role {agent.role!r}; in a hierarchical crew the "
                    "manager assigns steps by role, so give each agent a role of its own"
                )
        crew = graph.deliverables
        for index, name in enumerate(crew):
            later = [need for need in graph.dependency_names(name) if need in crew[index:]]
            if later:
                # Then a step's `after` (earlier tasks only) can never close a cycle: every
                # plan that fits the schema runs.
                raise ConfigurationError(
                    f"task {name!r} needs {later[0]!r}, which is listed after it; in a "
                    "hierarchical crew list each task after the tasks it needs"
                )
            owner = _owner(name, crew)
            if owner is not None:
                raise ConfigurationError(
                    f"task {name!r} has a name the hierarchical process gives its own steps "
                    f"({owner}); rename it"
                )
        if self.plan is not None:
            problems = _problems(self.plan, graph.deliverables, roles)
            if problems:
                listed = "; ".join(f"{p.task}: {p.message}" for p in problems)
                raise ConfigurationError(f"plan= does not fit the crew: {listed}")

    async def run(self, ctx: ProcessContext) -> None:
        """Plan, run the steps, review (redoing what the manager asks), answer."""
        crew = ctx.graph.deliverables
        workers = {agent.role: agent for agent in ctx.graph.members}
        plan = self.plan or await self._ask_plan(ctx, crew, workers)
        needs = _needs(ctx.graph, plan)
        last = await _Round(plan, needs, workers).add(ctx, crew)
        await ctx.run_ready()
        for round_ in range(1, self.max_review_rounds + 1):
            if not all(name in ctx.outputs for name in crew):
                return  # a step failed (on_failure="continue"): nothing to review or answer
            redo = await self._review(ctx, crew, round_)
            if not redo:
                break
            todo = _with_dependants(crew, needs, redo)
            last = await _Round(plan, needs, workers, round_, last, redo).add(ctx, todo)
            await ctx.run_ready()
        if all(name in ctx.outputs for name in crew):
            await ctx.ask("final_answer", self.manager, _answer_prompt(ctx, crew))

    def final_output(self, ctx: ProcessContext) -> TaskOutput | None:
        """The manager's final answer."""
        return ctx.outputs.get("final_answer") or super().final_output(ctx)

    def result_plan(self, ctx: ProcessContext) -> Plan | None:
        """The plan the steps followed: the fixed one, or the manager's last."""
        if self.plan is not None:
            return self.plan
        asked = [name for name in ctx.outputs if name == "plan" or name.startswith("plan.")]
        found = ctx.outputs[asked[-1]].data if asked else None
        return found if isinstance(found, Plan) else None

    async def _ask_plan(
        self, ctx: ProcessContext, crew: list[str], workers: Mapping[str, Agent]
    ) -> Plan:
        model = _with_schema(Plan, _plan_schema(ctx, crew, list(workers)))
        prompt = _plan_prompt(ctx, crew, workers)
        asked, problems, plan = prompt, list[PlanProblem](), Plan({})
        for attempt in range(1, self.max_plan_retries + 2):
            key = "plan" if attempt == 1 else f"plan.{attempt}"
            answer = await ctx.ask(key, self.manager, asked, output_model=model)
            plan = model.model_validate(answer.data)
            problems = _problems(plan, crew, list(workers))
            if not problems:
                needs = _needs(ctx.graph, plan)
                steps = _Round(plan, needs, workers).steps(ctx, crew)
                problems = ctx.check_plan(steps)
            if not problems:
                return plan
            listed = "\n".join(problem.describe() for problem in problems)
            asked = (
                f"{prompt}\n\nYour last plan could not be used:\n{listed}\n"
                "Answer with a plan that fixes this."
            )
        raise InvalidPlan(
            f"the manager's plan could not be used after {self.max_plan_retries + 1} tries: "
            + "; ".join(f"{p.task}: {p.message}" for p in problems),
            problems=problems,
            plan=plan,
        )

    async def _review(self, ctx: ProcessContext, crew: list[str], round_: int) -> dict[str, str]:
        """The crew tasks the manager wants redone, with its feedback (empty: accepted)."""
        model = _with_schema(Review, _review_schema(crew))
        results = []
        for name in crew:
            description, expected = ctx.graph.task(name).render(ctx.inputs)
            results.append(
                (
                    name,
                    f"Task: {description}\nExpected: {expected or '-'}\n"
                    f"Result:\n{ctx.outputs[name].text}",
                )
            )
        prompt = task_prompt(
            "Review your team's results below against what each task expects. Accept them, "
            "or name the tasks to redo, each with feedback that says what to change.",
            "",
            results,
        )
        review = (await ctx.ask(f"review.{round_}", self.manager, prompt, output_model=model)).data
        if review.accept:
            return {}
        return {redo.task: redo.feedback for redo in review.redo if redo.task in crew}


_OWN_STEP = re.compile(r"^(?:plan(?:\.\d+)?|review\.\d+|final_answer)$")
_PLAN_STEP = re.compile(r"^(.+)\.\d+(?:\.r\d+)?$")


def _owner(name: str, crew: list[str]) -> str | None:
    """Whose name ``name`` is, if the process names one of its own steps so: the manager's
    (plan, review, answer) or a step of another crew task (``research.1``)."""
    if _OWN_STEP.match(name):
        return "the manager's plan, reviews and answer are plan, plan.N, review.N, final_answer"
    found = _PLAN_STEP.match(name)
    if found and found.group(1) in crew:
        return f"the steps of task {found.group(1)!r} are {found.group(1)}.1, .2, ..."
    return None


def _manager(manager: Agent | str | None) -> Agent:
    if isinstance(manager, Agent):
        return manager
    if manager is None:
        return Agent.from_yaml("manager")
    if isinstance(manager, str):
        return Agent.from_yaml("manager", llm=manager)
    raise ConfigurationError(
        f"manager must be an Agent or a model string, not {type(manager).__name__}"
    )


def _with_schema(base: type[M], schema: dict[str, Any]) -> type[M]:
    """``base`` answering with ``schema`` for its JSON schema: what the model is asked for is
    the crew's exact schema, while answers are checked by this process, which lists every
    problem of a plan at once."""

    def model_json_schema(cls: type[M], *args: Any, **kwargs: Any) -> dict[str, Any]:
        import copy

        return copy.deepcopy(schema)

    namespace = {"model_json_schema": classmethod(model_json_schema), "__module__": __name__}
    return type(base.__name__, (base,), namespace)


def _plan_schema(ctx: ProcessContext, crew: list[str], roles: list[str]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for index, name in enumerate(crew):
        # A task's own agent, if it names one, comes first: a hint, not a rule.
        own = ctx.graph.agent_of(ctx.graph.task(name)).role
        hinted = sorted(roles, key=lambda role: role != own)
        step: dict[str, Any] = {
            "type": "object",
            "properties": {
                "worker": {"type": "string", "enum": hinted, "description": "Who does it."},
                "instructions": {
                    "type": "string",
                    "minLength": 1,
                    "pattern": r"\S",
                    "description": "What to do.",
                },
            },
            "required": ["worker", "instructions"],
            "additionalProperties": False,
        }
        if index:
            step["properties"]["after"] = {
                "type": "array",
                "items": {"type": "string", "enum": crew[:index]},
                "description": "Earlier tasks whose results this step needs, besides those "
                "the task needs already.",
            }
            step["required"].append("after")
        description, _ = ctx.graph.task(name).render(ctx.inputs)
        properties[name] = {
            "type": "array",
            "items": step,
            "minItems": 1,
            "maxItems": MAX_STEPS,
            "description": f"The steps of: {description[:200]}",
        }
    return {
        "title": "Plan",
        "type": "object",
        "properties": properties,
        "required": list(crew),
        "additionalProperties": False,
    }


def _review_schema(crew: list[str]) -> dict[str, Any]:
    return {
        "title": "Review",
        "type": "object",
        "properties": {
            "accept": {"type": "boolean", "description": "True when every result is good."},
            "redo": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "task": {"type": "string", "enum": list(crew)},
                        "feedback": {"type": "string", "description": "What to change."},
                    },
                    "required": ["task", "feedback"],
                    "additionalProperties": False,
                },
                "description": "When not accepted: the tasks to redo.",
            },
        },
        "required": ["accept", "redo"],
        "additionalProperties": False,
    }


def _plan_prompt(ctx: ProcessContext, crew: list[str], workers: Mapping[str, Agent]) -> str:
    team = "\n".join(f"- {role}: {agent.goal}" for role, agent in workers.items())
    lines = []
    for name in crew:
        description, expected = ctx.graph.task(name).render(ctx.inputs)
        needs = ctx.graph.dependency_names(name)
        lines.append(
            f"- {name}: {description}"
            + (f"\n  Expected output: {expected}" if expected else "")
            + (f"\n  Needs the results of: {', '.join(needs)}" if needs else "")
        )
    return (
        "Plan your team's work on the tasks below. For every task give the steps that complete "
        "it, in order: each names the team member who does it (by role) and says what to do. "
        "A task's last step produces its result.\n\nTeam:\n"
        + team
        + "\n\nTasks:\n"
        + "\n".join(lines)
    )


def _answer_prompt(ctx: ProcessContext, crew: list[str]) -> str:
    return task_prompt(
        "Write the final answer to the work your team did, from the results of its tasks below.",
        "",
        [(name, ctx.outputs[name].text) for name in crew],
    )


def _problems(plan: Plan, crew: list[str], roles: list[str]) -> list[PlanProblem]:
    """What the plan's schema says and an answer did not keep to."""
    problems = [
        PlanProblem(
            ProblemKind.UNKNOWN_TASK, name, f"the crew has no task {name!r}; its tasks: {crew}"
        )
        for name in plan.root
        if name not in crew
    ]
    for index, name in enumerate(crew):
        steps = plan.root.get(name)
        if not steps:
            problems.append(
                PlanProblem(ProblemKind.UNCOVERED, name, "has no step: give it at least one")
            )
            continue
        if len(steps) > MAX_STEPS:
            problems.append(
                PlanProblem(
                    ProblemKind.UNCOVERED,
                    name,
                    f"has {len(steps)} steps; give it at most {MAX_STEPS}",
                )
            )
        for number, step in enumerate(steps, start=1):
            label = f"{name}.{number}"
            if step.worker not in roles:
                problems.append(
                    PlanProblem(
                        ProblemKind.NO_AGENT,
                        label,
                        f"no team member has the role {step.worker!r}; the roles are {roles}",
                    )
                )
            if not step.instructions.strip():
                problems.append(PlanProblem(ProblemKind.UNCOVERED, label, "has no instructions"))
            for earlier in step.after:
                if earlier not in crew[:index]:
                    problems.append(
                        PlanProblem(
                            ProblemKind.UNKNOWN_DEPENDENCY,
                            label,
                            f"'after' names {earlier!r}; it may name only tasks listed before "
                            f"{name!r}: {crew[:index]}",
                        )
                    )
    return problems


def _needs(graph: TaskGraph, plan: Plan) -> dict[str, list[str]]:
    """The crew tasks each crew task waits for: its declared context and its plan's ``after``."""
    return {
        name: list(
            dict.fromkeys(
                [*graph.dependency_names(name), *(d for step in plan[name] for d in step.after)]
            )
        )
        for name in graph.deliverables
    }


def _with_dependants(
    crew: list[str], needs: Mapping[str, list[str]], redo: Mapping[str, str]
) -> list[str]:
    """The tasks to redo, and every crew task that waits on one of them, in crew order (one
    pass: a task needs only tasks listed before it, which `validate` and the plan's checks
    make sure of)."""
    todo = set(redo)
    for name in crew:
        if any(need in todo for need in needs[name]):
            todo.add(name)
    return [name for name in crew if name in todo]


@dataclass(frozen=True)
class _Round:
    """One round of steps: the plan's (``number`` 0), or a review's redo (1, 2, ...)."""

    plan: Plan
    needs: Mapping[str, list[str]]
    workers: Mapping[str, Agent]
    number: int = 0
    last: Mapping[str, str] = field(default_factory=dict)
    """Each crew task's last step before this round."""
    feedback: Mapping[str, str] = field(default_factory=dict)

    def ends(self, todo: list[str]) -> dict[str, str]:
        """Each crew task's last step once this round has added ``todo``'s steps."""
        suffix = f".r{self.number}" if self.number else ""
        return {**self.last, **{name: f"{name}.{len(self.plan[name])}{suffix}" for name in todo}}

    def steps(self, ctx: ProcessContext, todo: list[str]) -> list[Task]:
        """The step tasks of ``todo`` in this round."""
        suffix = f".r{self.number}" if self.number else ""
        ends = self.ends(todo)
        tasks = []
        for name in todo:
            crew_task = ctx.graph.task(name)
            steps = self.plan[name]
            for number, step in enumerate(steps, start=1):
                final = number == len(steps)
                if number == 1:
                    context = [ends[need] for need in self.needs[name]]
                    if self.number:
                        context.append(self.last[name])  # the result under review
                else:
                    context = [f"{name}.{number - 1}{suffix}"]
                description = (
                    f"{literal_template(step.instructions)}\n\n(Step {number} of {len(steps)} "
                    f"of the task {literal_template(repr(name))}: {crew_task.description})"
                )
                if self.number and number == 1:
                    asked = self.feedback.get(name, "a task it needs changed")
                    description += (
                        "\nThe manager reviewed the earlier result of this task and asks for a "
                        f"revision: {literal_template(asked)}"
                    )
                tasks.append(
                    Task(
                        description,
                        name=f"{name}.{number}{suffix}",
                        agent=self.workers.get(step.worker),
                        context=context,
                        expected_output=crew_task.expected_output if final else "",
                        output_model=crew_task.output_model if final else None,
                        timeout=crew_task.timeout,
                        retry=crew_task.retry,
                        fallback_agent=crew_task.fallback_agent,
                        group=crew_task.group,
                        priority=crew_task.priority,
                        cache=crew_task.cache,
                    )
                )
        return tasks

    async def add(self, ctx: ProcessContext, todo: list[str]) -> dict[str, str]:
        """Add this round's steps for ``todo``, delegate each of those crew tasks to its last
        step, and return each crew task's last step so far."""
        await ctx.add_tasks(self.steps(ctx, todo))
        ends = self.ends(todo)
        for name in todo:
            await ctx.delegate(name, ends[name])
        return ends


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
