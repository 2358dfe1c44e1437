"""``crewflow graph FILE.py``: a crew's task graph as Mermaid, DOT or JSON, with its workflow
marks (conditions, routers and their branches, optional context, guardrails), names of any kind
written so that each format reads them back whole, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import re
import textwrap
from typing import TYPE_CHECKING

import pytest
from rich.text import Text
from typer.testing import CliRunner, Result

from crewflow import cli

if TYPE_CHECKING:
    from pathlib import Path

# A small crew with every mark: a mapping router (two branches), a join taking both branches as
# optional, a condition, and a guardrail.
MARKED = """
from typing import Literal

from pydantic import BaseModel

from crewflow import Agent, Crew, Task, optional


class Triage(BaseModel):
    category: Literal["bug", "idea"]


def urgent(outputs):
    return True


def short_enough(output):
    return len(output.text) < 5000


agent = Agent(role="Desk", goal="Answer", llm="offline")
fix = Task("Fix it", name="fix", context=["triage"])
plan = Task("Plan it", name="plan", context=["triage"])
triage = Task(
    "Triage", name="triage", context=[], output_model=Triage,
    router={"bug": fix, "idea": plan}, router_field="category",
)
reply = Task(
    "Reply", name="reply", context=[optional(fix), optional(plan)], guardrail=short_enough
)
page = Task("Page someone", name="page", context=[triage], condition=urgent)
crew = Crew(
    agents=[agent], tasks=[triage, fix, plan, reply, page], process="parallel", name="desk"
)
"""

MERMAID = """\
flowchart TD
    t0["triage<br/>Desk<br/>routes on category"]
    t1["fix<br/>Desk"]
    t2["plan<br/>Desk"]
    t3["reply<br/>Desk<br/>guarded"]
    t4["page<br/>Desk<br/>if urgent"]
    t0 -->|"bug"| t1
    t0 -->|"idea"| t2
    t1 -.-> t3
    t2 -.-> t3
    t0 --> t4
"""

DOT = """\
digraph "desk" {
    rankdir=TB;
    node [shape=box, fontname="Helvetica"];
    edge [fontname="Helvetica"];
    "triage" [label="triage\\nDesk\\nroutes on category"];
    "fix" [label="fix\\nDesk"];
    "plan" [label="plan\\nDesk"];
    "reply" [label="reply\\nDesk\\nguarded"];
    "page" [label="page\\nDesk\\nif urgent"];
    "triage" -> "fix" [label="bug"];
    "triage" -> "plan" [label="idea"];
    "fix" -> "reply" [style=dashed];
    "plan" -> "reply" [style=dashed];
    "triage" -> "page";
}
"""


def crew_file(tmp_path: Path, source: str, name: str = "crew_file.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def invoke(*args: str, columns: int = 200, terminal: bool = False) -> Result:
    env = {"COLUMNS": str(columns), "TTY_COMPATIBLE": "1" if terminal else "0"}
    return CliRunner().invoke(cli.app, ["graph", *args], env=env)


@pytest.fixture
def marked(tmp_path: Path) -> Path:
    return crew_file(tmp_path, MARKED)


# -- the formats --------------------------------------------------------------------------------


def test_mermaid_is_the_default_and_marks_routers_conditions_guardrails_and_optional_edges(
    marked: Path,
) -> None:
    result = invoke(str(marked))

    assert result.exit_code == 0, result.output
    assert result.stdout == MERMAID
    assert invoke(str(marked), "--format", "mermaid").stdout == MERMAID


def test_dot_quotes_every_id_and_label_and_marks_the_same(marked: Path) -> None:
    result = invoke(str(marked), "--format", "dot")

    assert result.exit_code == 0, result.output
    assert result.stdout == DOT


def test_json_has_a_fixed_shape_with_marks_and_optional_edges(marked: Path) -> None:
    result = invoke(str(marked), "-f", "json")

    assert result.exit_code == 0, result.output
    shape = json.loads(result.stdout)
    assert list(shape) == ["crew", "process", "nodes", "edges"]
    assert (shape["crew"], shape["process"]) == ("desk", "parallel")
    nodes = {node["name"]: node for node in shape["nodes"]}
    assert list(nodes) == ["triage", "fix", "plan", "reply", "page"]
    assert all(list(node) == ["name", "agent", "kind", "marks"] for node in shape["nodes"])
    assert nodes["fix"] == {"name": "fix", "agent": "Desk", "kind": "deliverable", "marks": []}
    assert nodes["triage"]["marks"] == [
        {"kind": "router", "detail": "category", "label": "routes on category"}
    ]
    assert nodes["page"]["marks"] == [
        {"kind": "condition", "detail": "crew_file.urgent", "label": "if urgent"}
    ]
    assert nodes["reply"]["marks"] == [
        {"kind": "guarded", "detail": "crew_file.short_enough", "label": "guarded"}
    ]
    assert shape["edges"] == [
        {"source": "triage", "target": "fix", "optional": False, "label": "bug"},
        {"source": "triage", "target": "plan", "optional": False, "label": "idea"},
        {"source": "fix", "target": "reply", "optional": True, "label": None},
        {"source": "plan", "target": "reply", "optional": True, "label": None},
        {"source": "triage", "target": "page", "optional": False, "label": None},
    ]


def test_a_function_router_is_marked_with_its_name_and_its_edges_are_unlabelled(
    tmp_path: Path,
) -> None:
    path = crew_file(
        tmp_path,
        """
        from crewflow import Agent, Crew, Task

        def pick(output):
            return "a"

        agent = Agent(role="R", goal="g", llm="offline")
        first = Task("x", name="first", router=pick)
        a = Task("y", name="a", context=[first])
        crew = Crew(agents=[agent], tasks=[first, a])
        """,
    )

    shape = json.loads(invoke(str(path), "-f", "json").stdout)

    assert shape["nodes"][0]["marks"] == [
        {"kind": "router", "detail": "crew_file.pick", "label": "routes by pick"}
    ]
    assert shape["edges"] == [{"source": "first", "target": "a", "optional": False, "label": None}]


def test_several_router_values_for_one_branch_make_one_edge_labelled_with_all(
    tmp_path: Path,
) -> None:
    path = crew_file(
        tmp_path,
        """
        from typing import Literal
        from pydantic import BaseModel
        from crewflow import Agent, Crew, Task

        class Level(BaseModel):
            level: Literal[1, 2, 3]

        agent = Agent(role="R", goal="g", llm="offline")
        low = Task("low", name="low", context=["rate"])
        high = Task("high", name="high", context=["rate"])
        rate = Task("rate", name="rate", output_model=Level, router={1: low, 2: low, 3: high})
        crew = Crew(agents=[agent], tasks=[rate, low, high])
        """,
    )

    result = invoke(str(path))

    assert result.exit_code == 0, result.output
    assert '    t0 -->|"1, 2"| t1' in result.stdout.splitlines()
    assert '    t0 -->|"3"| t2' in result.stdout.splitlines()


def test_output_writes_the_file_and_prints_its_path(marked: Path, tmp_path: Path) -> None:
    target = tmp_path / "graph.dot"

    result = invoke(str(marked), "-f", "dot", "-o", str(target))

    assert result.exit_code == 0, result.output
    assert target.read_text(encoding="utf-8") == DOT
    assert result.stdout.strip() == str(target.resolve())


def test_a_named_crew_is_drawn_with_crew_option(tmp_path: Path) -> None:
    path = crew_file(
        tmp_path,
        """
        from crewflow import Agent, Crew, Task

        agent = Agent(role="R", goal="g", llm="offline")
        one = Crew(agents=[agent], tasks=[Task("x", name="only_one")])
        two = Crew(agents=[agent], tasks=[Task("y", name="only_two")])
        """,
    )

    result = invoke(str(path), "--crew", "two")

    assert result.exit_code == 0, result.output
    assert "only_two" in result.stdout
    assert "only_one" not in result.stdout


# -- names of any kind ----------------------------------------------------------------------------

HOSTILE = [
    'say "hi"',
    "back\\slash\\",
    "<b>bold</b> & co",
    "two\nlines",
    "#quot; not an entity",
    "pipe | and `tick`",
    "naïve 数据 🚀",
]


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    names = ", ".join(repr(name) for name in HOSTILE)
    return crew_file(
        tmp_path,
        f"""
        from crewflow import Agent, Crew, Task

        agent = Agent(role='The "<Agent>"', goal="g", llm="offline")
        tasks = []
        for name in [{names}]:
            tasks.append(Task("do it", name=name, context=tasks[-1:]))
        crew = Crew(agents=[agent], tasks=tasks, name='crew "x"')
        """,
    )


def _dot_strings(text: str) -> list[str]:
    """Every quoted string of a DOT text, unescaped as Graphviz reads it (``\\"`` is a quote,
    ``\\\\`` a backslash and ``\\n`` a line break, in labels)."""
    found = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"', text):
        found.append(re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), match[1]))
    return found


def test_dot_reads_every_hostile_name_back_whole(hostile: Path) -> None:
    result = invoke(str(hostile), "-f", "dot")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4 + 2 * len(HOSTILE) - 1 + 1  # no name broke a line
    strings = _dot_strings(result.stdout)
    assert strings[0] == 'crew "x"'
    for name in HOSTILE:
        assert name in strings  # the node's id
        assert f'{name}\nThe "<Agent>"' in strings  # its label


def _mermaid_text(label: str) -> str:
    """A Mermaid label as it reads: entity codes decoded, ``<br/>`` a line break."""
    named = {"quot": '"', "lt": "<", "gt": ">", "amp": "&"}
    return re.sub(
        r"#(\w+);", lambda m: named.get(m[1]) or chr(int(m[1])), label.replace("<br/>", "\n")
    )


def test_mermaid_writes_hostile_names_as_entity_codes_inside_quotes(hostile: Path) -> None:
    result = invoke(str(hostile))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    boxes = [line for line in lines if "[" in line]
    assert len(boxes) == len(HOSTILE)
    labels = []
    for line in boxes:
        match = re.fullmatch(r'    t\d+\["([^"]*)"\]', line)
        assert match, line  # no quote, bracket or newline escaped the label
        labels.append(_mermaid_text(match[1]))
    assert labels == [f'{name}\nThe "<Agent>"' for name in HOSTILE]
    assert "<b>" not in result.stdout  # markup in a name is never markup in the picture


def test_json_keeps_hostile_names_as_they_are(hostile: Path) -> None:
    shape = json.loads(invoke(str(hostile), "-f", "json").stdout)

    assert [node["name"] for node in shape["nodes"]] == HOSTILE
    assert shape["crew"] == 'crew "x"'


def test_control_characters_become_replacement_characters_in_pictures(tmp_path: Path) -> None:
    path = crew_file(
        tmp_path,
        """
        from crewflow import Agent, Crew, Task

        agent = Agent(role="R", goal="g", llm="offline")
        crew = Crew(agents=[agent], tasks=[Task("x", name="a\\x00b\\x07c")])
        """,
    )

    for form in ("mermaid", "dot"):
        result = invoke(str(path), "-f", form)

        assert result.exit_code == 0, result.output
        assert "a\ufffdb\ufffdc" in result.stdout, form
    # JSON escapes what it can; NUL is U+FFFD as in every record.
    shape = json.loads(invoke(str(path), "-f", "json").stdout)
    assert shape["nodes"][0]["name"] == "a\ufffdb\x07c"


# -- errors -------------------------------------------------------------------------------------

CYCLE = """
from crewflow import Agent, Crew, Task

agent = Agent(role="R", goal="g", llm="offline")
a = Task("x", name="a", context=["b"])
b = Task("y", name="b", context=["a"])
crew = Crew(agents=[agent], tasks=[a, b])
"""

NO_CREW = """
from crewflow import Agent, Task

agent = Agent(role="R", goal="g", llm="offline")
"""


@pytest.mark.parametrize(
    ("source", "args", "message"),
    [
        (None, (), "does not exist; expected a Python file defining a Crew"),
        (NO_CREW, (), "defines no Crew at module level"),
        (CYCLE, (), "the tasks' context forms a cycle"),
        (MARKED, ("--format", "svg"), "--format 'svg' is not a format; use one of: mermaid"),
        (MARKED, ("--crew", "other"), "has no Crew named 'other'; its crew is 'crew'"),
    ],
    ids=["missing file", "no crew", "crew fails to build", "unknown format", "unknown crew"],
)
@pytest.mark.parametrize("columns", [60, 80, 120])
def test_errors_are_one_clear_message_and_exit_2_at_any_width(
    tmp_path: Path, source: str | None, args: tuple[str, ...], message: str, columns: int
) -> None:
    path = tmp_path / "missing.py" if source is None else crew_file(tmp_path, source)

    result = invoke(str(path), *args, columns=columns, terminal=True)

    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = [Text.from_ansi(line) for line in result.stderr.splitlines()]
    assert max(line.cell_len for line in lines) <= columns
    said = " ".join(line.plain.strip() for line in lines)
    assert said.startswith("error: ")
    assert message in said


def test_an_unwritable_output_is_an_error_and_exit_2(marked: Path, tmp_path: Path) -> None:
    result = invoke(str(marked), "-o", str(tmp_path / "no" / "such" / "dir.md"))

    assert result.exit_code == 2, result.output
    assert "error: cannot write" in result.stderr


@pytest.mark.parametrize("columns", [60, 80, 120])
@pytest.mark.parametrize("form", ["mermaid", "dot", "json"])
def test_the_graph_is_never_wrapped_to_the_terminal(marked: Path, columns: int, form: str) -> None:
    wide = invoke(str(marked), "-f", form)

    result = invoke(str(marked), "-f", form, columns=columns, terminal=True)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert result.stdout == wide.stdout  # a machine format, line for line


MAPPED_AND_LOOPED = """
from pydantic import BaseModel

from crewflow import Agent, Crew, Loop, Task


class Docs(BaseModel):
    titles: list[str]


def approved(outputs):
    return True


def words(outputs):
    return outputs["collect"].text.split()


agent = Agent(role="Desk", goal="Work", llm="offline")
collect = Task("collect", name="collect", context=[], output_model=Docs)
each = Task("read {item}", name="each", context=[collect], map_over="collect.titles")
every = Task("say {item}", name="every", context=[collect], map_over=words)
draft = Task("draft", name="draft", context=[each])
check = Task("check", name="check", context=[draft])
crew = Crew(
    tasks=[collect, each, every, Loop([draft, check], until=approved, max_rounds=4)],
    agents=[agent],
    process="parallel",
    name="shaped",
)
"""


def test_maps_and_loops_are_marked_in_every_format(tmp_path: Path) -> None:
    path = crew_file(tmp_path, MAPPED_AND_LOOPED)

    shape = json.loads(invoke(str(path), "-f", "json").stdout)
    marks = {node["name"]: node["marks"] for node in shape["nodes"]}
    mermaid = invoke(str(path)).stdout
    dot = invoke(str(path), "-f", "dot").stdout

    assert marks["each"] == [
        {"kind": "map", "detail": "collect.titles", "label": "for each in collect.titles"}
    ]
    assert marks["every"] == [
        {"kind": "map", "detail": "crew_file.words", "label": "for each in words()"}
    ]
    loop = {"kind": "loop", "detail": "draft", "label": "loop draft (up to 4 rounds)"}
    assert marks["draft"] == marks["check"] == [loop]
    assert marks["collect"] == []
    for text in (mermaid, dot):
        assert "for each in collect.titles" in text
        assert "loop draft (up to 4 rounds)" in text
