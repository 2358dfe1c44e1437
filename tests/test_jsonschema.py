"""Tests for ``example_for_schema``: every pydantic-emitted schema gets a valid example."""

import datetime as dt
import ipaddress
import json
import re
import subprocess
import sys
import uuid
from decimal import Decimal
from enum import Enum, IntEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from pydantic import (
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    RootModel,
    TypeAdapter,
    conint,
    constr,
)

from crewflow import _jsonschema
from crewflow._jsonschema import example_for_schema


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Priority(IntEnum):
    LOW = 1
    HIGH = 5


class Address(BaseModel):
    street: str
    city: str
    postcode: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    email: str | None = None
    address: Address
    previous: list[Address] = []


class Flat(BaseModel):
    text: str
    count: int
    ratio: float
    flag: bool
    nothing: None = None


class OptionalFields(BaseModel):
    maybe_text: Optional[str] = None  # noqa: UP045 - the typing spelling on purpose
    maybe_int: int | None
    maybe_model: Address | None = None
    union: Union[int, str]  # noqa: UP007 - the typing spelling on purpose


class Literals(BaseModel):
    mode: Literal["fast", "slow"]
    version: Literal[2]
    mixed: Literal["a", 1, True]


class Enums(BaseModel):
    color: Color
    priority: Priority
    default_color: Color = Color.GREEN
    colors: list[Color]


class Containers(BaseModel):
    tags: list[str]
    scores: dict[str, int]
    matrix: list[list[float]]
    pair: tuple[int, str]
    rest: tuple[int, ...]
    unique: set[int]
    frozen: frozenset[str]
    people: list[Person]
    by_name: dict[str, Address]
    ids: dict[int, str]


class Constrained(BaseModel):
    short: str = Field(min_length=2, max_length=5)
    long: str = Field(min_length=120)
    exact: str = Field(min_length=4, max_length=4)
    tiny: str = Field(max_length=1)
    positive: int = Field(gt=0)
    negative: int = Field(lt=0)
    bounded: int = Field(ge=10, le=20)
    stepped: int = Field(ge=7, le=100, multiple_of=5)
    between: float = Field(gt=0, lt=1)
    hundredths: float = Field(ge=0.5, le=0.9, multiple_of=0.01)
    far: float = Field(ge=1000.5)
    items: list[int] = Field(min_length=3, max_length=5)
    none_allowed: list[str] = Field(max_length=0)
    code: Annotated[str, Field(pattern=r"^[A-Z]{3}-\d{4}$")]
    slug: constr(pattern=r"^[a-z0-9]+(?:-[a-z0-9]+)*$", max_length=30)  # type: ignore[valid-type]
    level: conint(ge=1, le=3)  # type: ignore[valid-type]


class Formats(BaseModel):
    when: dt.datetime
    day: dt.date
    clock: dt.time
    duration: dt.timedelta
    ident: uuid.UUID
    homepage: HttpUrl
    link: AnyUrl
    amount: Decimal
    ip: ipaddress.IPv4Address
    ip6: ipaddress.IPv6Address
    raw: bytes


class Node(BaseModel):
    value: int
    children: list["Node"] = []
    parent: "Node | None" = None


class Expr(BaseModel):
    op: Literal["add", "mul"]
    left: "Expr | int"
    right: "Expr | int"


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pets(BaseModel):
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    pets: list[Annotated[Cat | Dog, Field(discriminator="kind")]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    title: str
    count: int
    nested: Address


class Described(BaseModel):
    """A model whose fields carry descriptions, titles and defaults."""

    address: Address = Field(description="where", title="Home")
    color: Color = Field(default=Color.RED, description="favourite")
    anything: Any = None
    payload: dict[str, Any] = {}


class Tags(RootModel[list[str]]):
    pass


MODELS: list[type[BaseModel]] = [
    Address,
    Person,
    Flat,
    OptionalFields,
    Literals,
    Enums,
    Containers,
    Constrained,
    Formats,
    Node,
    Expr,
    Pets,
    Strict,
    Described,
    Tags,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@pytest.mark.parametrize("seed", ["", "Plan a trip to Lisbon", "x" * 500])
def test_pydantic_models_validate(model: type[BaseModel], seed: str) -> None:
    schema = model.model_json_schema()
    value = example_for_schema(schema, seed=seed)
    model.model_validate(value)
    # Also through JSON, as the loopback server sends it.
    model.model_validate_json(json.dumps(value))
    assert example_for_schema(schema, seed=seed) == value


@pytest.mark.parametrize(
    # Formats is left out: in serialization mode pydantic describes Decimal as a bare
    # string, so no schema-driven value can be guaranteed to parse back as a Decimal.
    "model",
    [m for m in MODELS if m is not Formats],
    ids=lambda m: m.__name__,
)
def test_serialization_mode_schemas_validate(model: type[BaseModel]) -> None:
    schema = model.model_json_schema(mode="serialization")
    model.model_validate(example_for_schema(schema))


def test_every_property_is_filled_and_strings_are_readable() -> None:
    value = example_for_schema(Person.model_json_schema(), seed="  Plan   a trip ")
    assert set(value) == {"name", "age", "email", "address", "previous"}
    assert value["name"] == "offline name for Plan a trip"
    assert value["email"] == "offline email for Plan a trip"
    assert value["address"]["postcode"] == "11111"
    assert len(value["previous"]) == 1
    assert example_for_schema({"type": "string"}) == "offline value"


def test_seed_changes_strings() -> None:
    schema = Address.model_json_schema()
    assert example_for_schema(schema, seed="a") != example_for_schema(schema, seed="b")


def test_recursive_models_terminate_with_the_shortest_option() -> None:
    value = example_for_schema(Node.model_json_schema())
    assert value == {"value": 1, "children": [], "parent": None}
    expr = Expr.model_validate(example_for_schema(Expr.model_json_schema()))
    assert expr.left == 1


def test_unions_prefer_the_first_non_null_branch() -> None:
    value = example_for_schema(OptionalFields.model_json_schema())
    assert value["maybe_int"] == 1
    assert value["maybe_model"]["city"].startswith("offline city")
    assert value["union"] == 1
    assert example_for_schema({"anyOf": [{"type": "null"}, {"type": "boolean"}]}) is True
    assert example_for_schema({"type": ["null", "integer"]}) == 1


def test_constraints_are_respected() -> None:
    value = example_for_schema(Constrained.model_json_schema(), seed="seed")
    assert 2 <= len(value["short"]) <= 5
    assert len(value["long"]) == 120
    assert len(value["exact"]) == 4
    assert len(value["tiny"]) == 1
    assert value["positive"] >= 1
    assert value["negative"] < 0
    assert 10 <= value["bounded"] <= 20
    assert value["stepped"] % 5 == 0
    assert 0 < value["between"] < 1
    assert 3 <= len(value["items"]) <= 5
    assert len(set(value["items"])) == len(value["items"])
    assert value["none_allowed"] == []
    assert re.fullmatch(r"[A-Z]{3}-\d{4}", value["code"])
    assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", value["slug"])


def test_formats_look_like_their_format() -> None:
    value = example_for_schema(Formats.model_json_schema(), seed="s")
    assert dt.datetime.fromisoformat(value["when"])
    assert dt.date.fromisoformat(value["day"])
    assert uuid.UUID(value["ident"])
    assert value["homepage"].startswith("https://example.com/")
    email = example_for_schema({"type": "string", "format": "email"})
    assert re.fullmatch(r"[a-z.]+@example\.com", email)


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"const": "fixed"}, "fixed"),
        ({"enum": [None, "x"]}, "x"),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"type": "integer", "minimum": 5, "maximum": 5}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        ({"type": "integer", "exclusiveMaximum": -5}, -6),
        ({"type": "integer", "minimum": 5, "exclusiveMinimum": True}, 6),
        ({"type": "number", "minimum": 2.5}, 2.5),
        ({"type": "number", "multipleOf": 0.25, "minimum": 1.1}, 1.25),
        ({"type": "array", "maxItems": 0}, []),
        ({"type": "array", "items": False, "prefixItems": [{"type": "integer"}]}, [1]),
        ({"type": "object"}, {}),
        ({"type": "object", "additionalProperties": {"type": "integer"}}, {"1": 1}),
        ({"type": "object", "minProperties": 2}, {"1": "offline value", "2": "offline value 2"}),
        ({"type": "string", "maxLength": 0}, ""),
        ({"type": "string", "pattern": "^[a-z]+$"}, "offlinevalue"),
        ({"type": "string", "pattern": "^(foo|bar)baz$"}, "foobaz"),
        ({"type": "string", "pattern": r"^\w+@\w+\.org$"}, "a@a.org"),
        ({"minimum": 3}, 3.0),
        ({"properties": {"a": {"type": "integer"}}}, {"a": 1}),
        ({}, "offline value"),
    ],
)
def test_raw_schemas(schema: dict[str, Any], expected: Any) -> None:
    assert example_for_schema(schema) == expected


def test_all_of_merges_parts() -> None:
    schema = {
        "$defs": {"Base": {"type": "object", "properties": {"a": {"type": "integer"}}}},
        "allOf": [
            {"$ref": "#/$defs/Base"},
            {"properties": {"b": {"type": "string"}}, "required": ["b"]},
        ],
    }
    assert example_for_schema(schema) == {"a": 1, "b": "offline b"}


def test_property_names_and_json_pointer_refs() -> None:
    schema = {
        "definitions": {"a/b": {"type": "integer", "minimum": 42}},
        "type": "object",
        "propertyNames": {"pattern": "^k[0-9]$"},
        "additionalProperties": {"$ref": "#/definitions/a~1b"},
    }
    value = example_for_schema(schema)
    assert len(value) == 1
    [(key, number)] = value.items()
    assert re.fullmatch(r"k[0-9]", key)
    assert number == 42


def test_type_adapter_schemas() -> None:
    for annotation in (list[int], dict[str, list[float]], tuple[str, int], Color | None):
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        adapter.validate_python(example_for_schema(adapter.json_schema()))


@pytest.mark.parametrize(
    "schema",
    [
        False,
        {"$ref": "#/$defs/Missing"},
        {"$ref": "https://example.com/schema.json"},
        {"type": "integer", "minimum": 5, "maximum": 4},
        {"enum": []},
        {
            "$defs": {
                "Loop": {
                    "type": "object",
                    "properties": {"next": {"$ref": "#/$defs/Loop"}},
                    "required": ["next"],
                }
            },
            "$ref": "#/$defs/Loop",
        },
    ],
)
def test_unsatisfiable_schemas_raise_value_error(schema: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own message
        example_for_schema(schema)


def test_unsupported_patterns_fall_back_to_plain_text() -> None:
    value = example_for_schema({"type": "string", "pattern": r"^(?=.*\d)\p{L}+$"})
    assert value == "offline value"


def test_module_imports_only_the_standard_library() -> None:
    # Loaded by path so the package's own __init__ does not count against it.
    path = Path(_jsonschema.__file__).resolve()
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('probe', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['probe'] = module\n"
        "spec.loader.exec_module(module)\n"
        "assert module.example_for_schema({'type': 'integer'}) == 1\n"
        "heavy = ('pydantic', 'openai', 'httpx', 'anyio', 'crewflow')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
