"""The task graph: a validated DAG of a crew's tasks (networkx underneath, loaded when needed).

Built when a `Crew` is constructed, so that mistakes surface there: duplicate names, context that
refers to a task outside the crew, cycles (the error names the tasks on it), tasks nobody can do.
Edges come from declared ``context``; a process may add the implicit edge of sequential crews
(a task with undeclared context depends on the one before it, `TaskGraph.chain_undeclared`),
which is then a real edge here.

A run works on its own copy, which may grow while the run goes on: a process adds whole plans
at once (`TaskGraph.check_tasks` says what is wrong with one, as `PlanProblem` values), and the
added tasks are ``internal`` where the crew's own are ``deliverable``.
"""

from __future__ import annotations

import bisect
import itertools
from typing import TYPE_CHECKING, Any

from crewflow import _dag
from crewflow._plan import PlanProblem, ProblemKind
from crewflow._records import TaskKind
from crewflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    import networkx as nx

    from crewflow.agent import Agent
    from crewflow.loop import Loop
    from crewflow.task import Task

__all__ = ["TaskGraph"]

#: What a task weighs in `TaskGraph.critical_path` and `TaskGraph.remaining_paths` when no
#: duration is known for it: every task counts the same.
UNIFORM_SECONDS = 1.0


class TaskGraph:
    """The DAG of a crew's tasks, in declaration order.

    Args:
        tasks: The tasks, in the order the crew declares them.
        agents: The crew's agents; when there is exactly one, tasks without an agent get it.
        default_agent: The agent of tasks without one, instead (a hierarchical crew's
            manager, who assigns their work).
        loops: The crew's loops (`crewflow.Loop`), whose tasks are among ``tasks``.

    Raises:
        ConfigurationError: Duplicate tasks or names, unknown context, a cycle, or a task with no
            agent to do it.
    """

    def __init__(
        self,
        tasks: Sequence[Task],
        *,
        agents: Sequence[Agent] = (),
        default_agent: Agent | None = None,
        loops: Sequence[Loop] = (),
    ) -> None:
        if not tasks:
            raise ConfigurationError("a crew needs at least one task: Crew(tasks=[...])")
        self._tasks: list[Task] = []
        self._names: dict[str, str] = {}
        self._by_name: dict[str, Task] = {}
        self._agents: dict[str, Agent] = {}
        # Tuples of names: immutable, so a copy shares them, and untracked by the garbage
        # collector (two objects a task fewer for it to walk while the crew lives).
        self._deps: dict[str, tuple[str, ...]] = {}
        self._position: dict[str, int] = {}
        self._dependants: dict[str, tuple[str, ...]] = {}
        self._internal: set[str] = set()
        self._optional: dict[str, frozenset[str]] = {}
        self._loops: dict[str, tuple[Loop, tuple[str, ...]]] = {}  # by name: loop, its tasks
        self._loop_of: dict[str, str] = {}  # a loop's task's name: the loop's name
        self._members = tuple(agents)
        self._default_agent = default_agent or (agents[0] if len(agents) == 1 else None)
        self._agent_count = len(agents)
        self._nx: Any = None  # built on demand from the dicts (the dicts are the truth)
        for position, task in enumerate(tasks, start=1):
            self._register(task, position)
        for task in tasks:
            self._connect(self._names[task.id], self._resolve_context(task))
        self._check_acyclic()
        for loop in loops:
            self._register_loop(loop)
        for task in tasks:
            if isinstance(task.router, dict):
                self._check_routes(task)
            if isinstance(task.map_over, str):
                self.map_source(self._names[task.id])

    # -- lookups -------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[Task]:
        """The tasks in declaration order."""
        return list(self._tasks)

    @property
    def names(self) -> list[str]:
        """The task names: the crew's in declaration order, then added ones in the order added."""
        return [self._names[t.id] for t in self._tasks]

    @property
    def deliverables(self) -> list[str]:
        """The names of the crew's own tasks, in declaration order."""
        return [name for name in self.names if name not in self._internal]

    def kind(self, name: str) -> TaskKind:
        """Whether the task called ``name`` is the crew's (deliverable) or the process's."""
        return TaskKind.INTERNAL if name in self._internal else TaskKind.DELIVERABLE

    @property
    def agents(self) -> list[Agent]:
        """The distinct agents doing the tasks, in order of first use."""
        seen: dict[str, Agent] = {}
        for agent in self._agents.values():
            seen.setdefault(agent.id, agent)
        return list(seen.values())

    @property
    def members(self) -> tuple[Agent, ...]:
        """The crew's agents: those given as ``Crew(agents=...)``, else the tasks' own (a
        hierarchical crew's workers)."""
        return self._members

    @property
    def nx(self) -> Any:
        """The graph as a ``networkx.DiGraph`` (nodes are task names, in declaration order).
        Built on first use; do not modify it."""
        if self._nx is None:
            self._nx = _dag.digraph(self._deps)
        return self._nx

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task: object) -> bool:
        return getattr(task, "id", None) in self._names

    def has(self, name: str) -> bool:
        """Whether a task of this graph is called ``name``."""
        return name in self._by_name

    def name_of(self, task: Task) -> str:
        """The name of ``task`` in this graph (its own, or ``task_<position>``)."""
        try:
            return self._names[task.id]
        except KeyError:
            raise ConfigurationError(f"{task!r} is not part of this crew") from None

    def task(self, name: str) -> Task:
        """The task called ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no task named {name!r}; tasks: {self.names}") from None

    def agent_of(self, task: Task) -> Agent:
        """The agent that does ``task``."""
        return self._agents[task.id]

    def dependencies(self, task: Task) -> list[Task]:
        """The tasks ``task`` depends on, in declaration order."""
        return [self._by_name[n] for n in self._deps[self.name_of(task)]]

    def dependants(self, task: Task) -> list[Task]:
        """The tasks that depend on ``task``, in declaration order."""
        return [self._by_name[n] for n in self._dependants[self.name_of(task)]]

    def dependency_names(self, name: str) -> tuple[str, ...]:
        """Names of the dependencies of the task called ``name``, in declaration order."""
        return self._deps[name]

    def dependant_names(self, name: str) -> tuple[str, ...]:
        """Names of the tasks that depend on the task called ``name``, in declaration order."""
        return self._dependants[name]

    def optional_dependencies(self, name: str) -> frozenset[str]:
        """Names of the dependencies the task called ``name`` can do without (`optional`)."""
        return self._optional.get(name, frozenset())

    def routes(self, name: str) -> dict[Any, str] | None:
        """A mapping router's branches for the task called ``name``: each value of its
        ``router_field`` with the name of the task it runs (``None``: no mapping router)."""
        router = self._by_name[name].router
        if not isinstance(router, dict):
            return None
        return {
            value: target if isinstance(target, str) else self._names[target.id]
            for value, target in router.items()
        }

    def map_source(self, name: str) -> tuple[str, list[str]] | None:
        """Where the map of the task called ``name`` finds its list: the upstream task's name
        and the fields to follow in its output (``None``: no map, or a function gives it).

        Raises:
            ConfigurationError: ``map_over`` names no task of the task's (required) context.
        """
        over = self._by_name[name].map_over
        if not isinstance(over, str):
            return None
        deps = [d for d in self._deps[name] if d not in self.optional_dependencies(name)]
        found = [d for d in deps if over == d or over.startswith(d + ".")]
        if not found:
            listed = ", ".join(deps) or "none"
            raise ConfigurationError(
                f"task {name!r} maps over {over!r}, but its context has no such task (required "
                f"context: {listed}): add the task whose output holds the list to its context, "
                "and write map_over='that_task.field'"
            )
        upstream = max(found, key=len)  # a task name may hold dots: the longest one that fits
        path = over[len(upstream) + 1 :]
        return upstream, path.split(".") if path else []

    @property
    def loops(self) -> dict[str, tuple[Loop, tuple[str, ...]]]:
        """The crew's loops by name, each with its tasks' names in round order."""
        return dict(self._loops)

    def loop_of(self, name: str) -> str | None:
        """The name of the loop the task called ``name`` belongs to, if any."""
        return self._loop_of.get(name)

    def workflow_features(self) -> list[str]:
        """The workflow features the tasks use, each named as the user wrote it
        (``"condition"``, ``"router"``, ``"optional context"``, ``"guardrail"``, ``"map"``,
        ``"loop"``), in a fixed order."""
        found = {
            "condition": any(task.condition is not None for task in self._tasks),
            "router": any(task.router is not None for task in self._tasks),
            "optional context": bool(self._optional),
            "guardrail": any(task.guardrail is not None for task in self._tasks),
            "map": any(task.map_over is not None for task in self._tasks),
            "loop": bool(self._loops),
        }
        return [feature for feature, used in found.items() if used]

    def position(self, name: str) -> int:
        """The declaration index of the task called ``name`` (0 for the first)."""
        return self._position[name]

    @property
    def placeholders(self) -> dict[str, list[str]]:
        """Every template input the tasks need, with the names of the tasks that need it."""
        needed: dict[str, list[str]] = {}
        for task in self._tasks:
            for placeholder in sorted(task.placeholders):
                needed.setdefault(placeholder, []).append(self._names[task.id])
        return needed

    # -- changes -------------------------------------------------------------------------------

    def chain_undeclared(self) -> None:
        """Make each crew task whose ``context`` is not declared (``None``) depend on the task
        before it, as the sequential process does (from `Process.prepare_graph`, at crew
        construction).

        Not when the task before already needs this one (through declared context): that edge
        would close a cycle the user never wrote; the process reports the ordering instead.
        """
        tasks = [task for task in self._tasks if self._names[task.id] not in self._internal]
        # A networkx graph of its own, built when first needed and kept in step with the new
        # edges (each drops `nx`: rebuilding that for every task would be quadratic).
        graph: nx.DiGraph | None = None
        for previous, task in itertools.pairwise(tasks):
            if task.context is not None:
                continue
            name, before = self._names[task.id], self._names[previous.id]
            # What nothing depends on cannot lead to `before`: most tasks of a sequential crew
            # have no dependants yet, and need no graph. benchmarks/graph.py, "sequential",
            # 10,000 tasks: 62 ms, against 196 ms asking nx.has_path for every task.
            if self._dependants[name]:
                graph = _dag.digraph(self._deps) if graph is None else graph
                if _dag.reaches(graph, name, before):
                    continue
            self._connect(name, [before])
            if graph is not None:
                graph.add_edge(before, name)

    def check_tasks(
        self, tasks: Sequence[Task], *, inputs: Mapping[str, Any] | None = None
    ) -> list[PlanProblem]:
        """What stops ``tasks`` from being added to this graph, as a whole (empty: nothing).

        Each task needs a name of its own (its name in the run, stable across a resume), an
        agent (its own, or the crew's only one), and dependencies (its ``context``) that are in
        the graph or among ``tasks`` (in any order), without a cycle. With ``inputs``, its
        templates' placeholders must be among them.
        """
        problems: list[PlanProblem] = []
        names: dict[str, Task] = {}
        ids: set[str] = set()
        for task in tasks:
            problems += self._check_identity(task, names, ids)
        for task in tasks:
            problems += self._check_needs(task, names, ids, inputs)
        if not problems:
            problems += self._plan_cycles(tasks)
        return problems

    def _extend(
        self,
        tasks: Sequence[Task],
        *,
        kind: TaskKind = TaskKind.INTERNAL,
        checked: bool = False,
    ) -> list[str]:
        """Add a whole plan to this graph (a run's copy) and return the tasks' names. The
        runtime's: a process adds tasks with ``ProcessContext.add_tasks``, which records them.
        ``checked``: the caller found no problem with `check_tasks` already.

        Raises:
            ValueError: `check_tasks` finds a problem; the graph is left as it was.
        """
        problems = [] if checked else self.check_tasks(tasks)
        if problems:
            raise ValueError("; ".join(problem.message for problem in problems))
        start = len(self._tasks) + 1
        for position, task in enumerate(tasks, start=start):
            self._register(task, position)
            if kind == TaskKind.INTERNAL:
                self._internal.add(self._names[task.id])
        for task in tasks:
            self._connect(self._names[task.id], self._resolve_context(task))
        return [self._names[task.id] for task in tasks]

    def copy(self) -> TaskGraph:
        """An independent copy (a run adds tasks to its own copy, never to the crew's graph)."""
        clone = object.__new__(TaskGraph)
        clone._tasks = list(self._tasks)
        clone._names = dict(self._names)
        clone._by_name = dict(self._by_name)
        clone._agents = dict(self._agents)
        clone._deps = dict(self._deps)  # the tuples are shared: a change replaces one
        clone._position = dict(self._position)
        clone._dependants = dict(self._dependants)
        clone._internal = set(self._internal)
        clone._optional = dict(self._optional)
        clone._loops = self._loops  # never changed after construction
        clone._loop_of = self._loop_of
        clone._members = self._members
        clone._default_agent = self._default_agent
        clone._agent_count = self._agent_count
        clone._nx = self._nx  # never modified, only dropped on change: safe to share
        return clone

    # -- analysis ------------------------------------------------------------------------------

    def topological_order(self) -> list[Task]:
        """Tasks in an order where each comes after its dependencies (declaration order breaks
        ties)."""
        return [self._by_name[name] for name in _dag.topological_order(self.nx)]

    def critical_path(
        self, durations: Mapping[str, float] | None = None
    ) -> tuple[float, list[str]]:
        """The longest chain of dependent tasks.

        Ties go to the first dependency (in declaration order) even at 0 s, so zero-duration
        tasks stay on the chain.

        Args:
            durations: Seconds per task name; tasks not in it count 1.0 (uniform).

        Returns:
            The chain's total duration and its task names, first to last.
        """
        return _dag.critical_path(self.nx, durations or {}, default=UNIFORM_SECONDS)

    def remaining_paths(self, durations: Mapping[str, float] | None = None) -> dict[str, float]:
        """For each task, the longest chain from its start to the end of the graph, its own
        duration included: how urgent it is when slots are scarce.

        Args:
            durations: Seconds per task name; tasks not in it count 1.0 (uniform).
        """
        return _dag.remaining_paths(
            self._dependants, self._ready_order(), durations or {}, default=UNIFORM_SECONDS
        )

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart (paste into Markdown; GitHub and the docs render
        it): a box per task with its name, its agent and a line per workflow mark (``if
        is_urgent``, ``routes on category``, ``guarded``), an arrow per dependency, dashed for
        `optional` context and labelled with the values of a mapping router.

        Example:
            ```python
            print(crew.graph.to_mermaid())
            ```
        """
        from crewflow import _graph_text  # only when drawn: building a crew does not need it

        return _graph_text.mermaid(_graph_text.picture(self))

    def to_dot(self, name: str = "crew") -> str:
        """The graph as a Graphviz DOT digraph called ``name`` (``dot -Tsvg`` draws it), marked
        as `to_mermaid` marks it; node ids are the task names, quoted."""
        from crewflow import _graph_text

        return _graph_text.dot(_graph_text.picture(self), name=name)

    def to_json(self) -> dict[str, Any]:
        """The graph as JSON values: ``{"nodes": [...], "edges": [...]}``, keys in a fixed
        order. A node is ``{"name", "agent", "kind", "marks": [{"kind", "detail", "label"}]}``,
        an edge ``{"source", "target", "optional", "label"}`` (``label``: the values of
        ``source``'s mapping router that choose ``target``, else ``null``)."""
        from crewflow import _graph_text

        return _graph_text.json_value(_graph_text.picture(self))

    # -- building ------------------------------------------------------------------------------

    def _register(self, task: Task, position: int) -> None:
        if task.id in self._names:
            raise ConfigurationError(
                f"{task!r} appears twice in the crew's tasks: list each task once"
            )
        name = task.name or f"task_{position}"
        if name in self._by_name:
            raise ConfigurationError(
                f"two tasks are named {name!r}: give each task a unique name= "
                "(default names are task_<position>)"
            )
        agent = task.agent or self._default_agent
        if agent is None:
            raise ConfigurationError(
                f"task {name!r} has no agent and the crew has {self._agent_count} agents to "
                "choose from: set Task(agent=...) or give the crew exactly one agent"
            )
        self._tasks.append(task)
        self._names[task.id] = name
        self._by_name[name] = task
        self._agents[task.id] = agent
        self._deps[name] = ()
        self._dependants[name] = ()
        self._position[name] = len(self._position)
        self._nx = None

    def _check_identity(
        self, task: Task, planned: dict[str, Task], ids: set[str]
    ) -> list[PlanProblem]:
        """Problems with ``task``'s name and identity; adds it to ``planned`` and ``ids``."""
        found: list[PlanProblem] = []
        label = _label(task)
        if task.name is None:
            message = (
                "has no name; give every added task a name= (its name in the run, the same on "
                "every resume), e.g. 'research.1'"
            )
            found.append(PlanProblem(ProblemKind.UNNAMED, label, message))
        elif task.name in self._by_name or task.name in planned:
            message = f"the name {task.name!r} is taken by another task of the run; choose another"
            found.append(PlanProblem(ProblemKind.DUPLICATE, label, message))
        else:
            planned[task.name] = task
        if task.id in self._names or task.id in ids:
            message = "this task is in the run already; add each task once"
            found.append(PlanProblem(ProblemKind.DUPLICATE, label, message))
        ids.add(task.id)
        return found

    def _check_needs(
        self,
        task: Task,
        planned: Mapping[str, Task],
        ids: set[str],
        inputs: Mapping[str, Any] | None,
    ) -> list[PlanProblem]:
        """Problems with what ``task`` needs: an agent, its dependencies, its inputs."""
        found: list[PlanProblem] = []
        label = _label(task)
        if (task.agent or self._default_agent) is None:
            message = (
                f"has no agent and the crew has {self._agent_count} to choose from; set "
                "Task(agent=...)"
            )
            found.append(PlanProblem(ProblemKind.NO_AGENT, label, message))
        for ref in task.context_refs():
            if isinstance(ref, str):
                itself, known = ref == task.name, ref in self._by_name or ref in planned
            else:
                itself, known = ref.id == task.id, ref.id in self._names or ref.id in ids
            if itself:
                found.append(PlanProblem(ProblemKind.SELF_DEPENDENCY, label, "depends on itself"))
            elif not known:
                message = f"depends on {ref!r}, which is neither a task of the run nor of this plan"
                found.append(PlanProblem(ProblemKind.UNKNOWN_DEPENDENCY, label, message))
        if inputs is not None:
            missing = sorted(task.placeholders - set(inputs))
            if missing:
                message = (
                    f"its templates need inputs the run was not given: {', '.join(missing)}; "
                    "write {{name}} for a literal brace"
                )
                found.append(PlanProblem(ProblemKind.MISSING_INPUT, label, message))
        return found

    def _plan_cycles(self, tasks: Sequence[Task]) -> list[PlanProblem]:
        """A problem per group of plan tasks that depend on each other in a circle (the plan is
        otherwise valid, so every reference resolves). Strongly connected components, not every
        cycle: a model's plan may hold exponentially many."""
        ids = {task.id: task.name or "" for task in tasks}
        names = {task.name for task in tasks if task.name}
        deps: dict[str, list[str]] = {}
        for task in tasks:
            refs = (ref if isinstance(ref, str) else ids.get(ref.id) for ref in task.context_refs())
            deps[ids[task.id]] = [dep for dep in refs if dep in names]
        if not any(deps.values()):
            return []  # no task of the plan needs another (a map's items): no circle to find
        order = {name: index for index, name in enumerate(ids.values())}
        problems = []
        for component in _dag.circles(_dag.digraph(deps)):
            circle = sorted(component, key=order.__getitem__)
            problems.append(
                PlanProblem(
                    ProblemKind.CYCLE,
                    circle[0],
                    "depends on itself through a circle of tasks: " + ", ".join(circle),
                )
            )
        return sorted(problems, key=lambda problem: order[problem.task])

    def _resolve_context(self, task: Task) -> list[str]:
        names = [self._ref_name(task, ref) for ref in task.context_refs()]
        marked = task.optional_context
        if marked:
            own = self._names[task.id]
            self._optional[own] = frozenset(
                name
                for ref, name in zip(task.context_refs(), names, strict=True)
                if (ref if isinstance(ref, str) else ref.id) in marked
            )
        return names

    def _ref_name(self, task: Task, ref: Task | str) -> str:
        owner = self._names[task.id]
        if isinstance(ref, str):
            if ref not in self._by_name:
                raise ConfigurationError(
                    f"task {owner!r} has context {ref!r}, but no task in this crew has that "
                    f"name; task names: {', '.join(self.names)}"
                )
            return ref
        if ref.id not in self._names:
            raise ConfigurationError(
                f"task {owner!r} has context {ref!r}, which is not in this crew: add it to "
                "Crew(tasks=[...]) or remove it from the context"
            )
        return self._names[ref.id]

    def _register_loop(self, loop: Loop) -> None:
        """Keep ``loop`` under its name, after checking that its tasks are the crew's, in no
        other loop, each after the loop's tasks it needs, and not needed by an earlier one."""
        names = []
        for task in loop.tasks:
            name = self._names.get(task.id)
            if name is None:
                raise ConfigurationError(f"{task!r} of a Loop is not one of the crew's tasks")
            if name in self._loop_of:
                raise ConfigurationError(
                    f"task {name!r} is in two loops ({self._loop_of[name]!r} and another): "
                    "a task belongs to one loop at most"
                )
            names.append(name)
        label = loop.name or names[0]
        if label in self._loops or (label != names[0] and label in self._by_name):
            raise ConfigurationError(
                f"two loops, or a loop and a task, are named {label!r}: give the Loop a name="
            )
        members = set(names)
        for index, name in enumerate(names):
            later = [dep for dep in self._deps[name] if dep in members and names.index(dep) > index]
            if later:
                raise ConfigurationError(
                    f"task {name!r} of loop {label!r} needs {later[0]!r}, which comes after it in "
                    "the loop: a round runs the loop's tasks in order, so list the loop's tasks in "
                    "the order they need each other"
                )
        self._loops[label] = (loop, tuple(names))
        for name in names:
            self._loop_of[name] = label

    def _check_routes(self, task: Task) -> None:
        """A mapping router's tasks must be direct dependants of its task (the tasks that list
        it in their context): the router chooses among them."""
        name = self._names[task.id]
        dependants = self._dependants[name]
        strays = []
        for target in (task.router or {}).values():  # type: ignore[union-attr]
            if isinstance(target, str):
                known = target if target in self._by_name else None
            else:
                known = self._names.get(target.id)
            if known is None or known not in dependants:
                strays.append(known or (target if isinstance(target, str) else repr(target)))
        if strays:
            listed = ", ".join(dependants) or "none"
            raise ConfigurationError(
                f"the router of task {name!r} names {', '.join(map(repr, strays))}, which "
                f"{'does' if len(strays) == 1 else 'do'} not list {name!r} in its context: a "
                f"router chooses among the tasks that depend on its task (here: {listed}); "
                f"add {name!r} to their context"
            )

    @staticmethod
    def _check_not_self(name: str, dependencies: Iterable[str]) -> None:
        if name in dependencies:
            raise ConfigurationError(
                f"task {name!r} lists itself in its context: a task cannot depend on itself"
            )

    def _connect(self, name: str, dependencies: Iterable[str]) -> None:
        dependencies = list(dependencies)
        self._check_not_self(name, dependencies)
        known = self._deps[name]
        added = [dep for dep in dict.fromkeys(dependencies) if dep not in known]
        if not added:
            return
        position = self._position.__getitem__
        self._deps[name] = tuple(sorted((*known, *added), key=position))
        at = position(name)
        for dep in added:
            dependants = self._dependants[dep]
            if not dependants or position(dependants[-1]) < at:  # declaration order: the usual
                self._dependants[dep] = (*dependants, name)
            else:
                index = bisect.bisect(dependants, at, key=position)
                self._dependants[dep] = (*dependants[:index], name, *dependants[index:])
        self._nx = None

    def _ready_order(self) -> list[str]:
        """The names in an order where each comes after its dependencies, found on the dicts
        (Kahn's algorithm, first come first served); a shorter list than the tasks means a
        cycle.

        Hand-written for the two hot paths, where building the networkx graph costs more than
        the answer: the acyclicity check of every construction, and the remaining paths the
        dispatcher ranks tasks by at the start of every run and after every ``add_tasks``.
        ``benchmarks/graph.py`` at 10,000 tasks (medians of 5 runs, alternated with the
        networkx version): construction 86 ms, against 178 ms building the networkx graph for
        ``nx.is_directed_acyclic_graph``; the dispatcher's start 38 ms against 124 ms with
        ``nx.topological_sort`` on a graph built for the run; adding 10 tasks 24 ms against
        148 ms. Order-sensitive analysis (`topological_order`, `critical_path`) uses networkx.
        """
        waiting = {name: len(deps) for name, deps in self._deps.items()}
        order = [name for name, count in waiting.items() if count == 0]
        for name in order:  # grows while it is read
            for dependant in self._dependants[name]:
                waiting[dependant] -= 1
                if waiting[dependant] == 0:
                    order.append(dependant)
        return order

    def _check_acyclic(self) -> None:
        if len(self._ready_order()) == len(self._tasks):
            return
        cycle = _dag.find_cycle(self.nx)  # only to name the tasks on the cycle
        raise ConfigurationError(
            f"the tasks' context forms a cycle: {' -> '.join(cycle)}; remove one of these "
            "context references so that the tasks can run in some order"
        )


def _label(task: Task) -> str:
    """How a problem names a task: its name, else the start of its description."""
    return task.name or repr(" ".join(task.description.split())[:60])
