"""The shape of answer an agent asks for (``response_format``): 'text', 'json' (JSON mode),
or a JSON Schema the answer must match, in this service's form or OpenAI's."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from app.engine.json_checks import first_problem
from app.engine.structured import DEFAULT_SCHEMA_NAME, OutputSchema, schema_problem


class ResponseFormat(StrEnum):
    """The shape of output requested from the model."""

    # Free text, no constraint.
    text = "text"
    # A JSON object (the upstream's JSON mode).
    json = "json"


# OpenAI's rule for a schema's name.
SCHEMA_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class NamedJsonSchema(BaseModel):
    """OpenAI's ``json_schema`` object: a named schema and whether it is strict."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True)

    name: str = Field(default=DEFAULT_SCHEMA_NAME, pattern=SCHEMA_NAME_PATTERN)
    description: str | None = Field(default=None, max_length=10_000)
    schema_: dict[str, Any] = Field(alias="schema", description="A JSON Schema.")
    strict: StrictBool | None = None


class JsonSchemaFormat(BaseModel):
    """``{"type": "json_schema", "schema": {…}}``, or OpenAI's form
    ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True, validate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] | None = Field(
        default=None, alias="schema", description="The JSON Schema the answer must match."
    )
    json_schema: NamedJsonSchema | None = Field(
        default=None, description="OpenAI's form: the schema with its name and strict flag."
    )

    @model_validator(mode="after")
    def _one_valid_schema(self) -> JsonSchemaFormat:
        if (self.schema_ is None) == (self.json_schema is None):
            raise PydanticCustomError(
                "schema_required",
                "give the JSON Schema either as 'schema' or as OpenAI's "
                "'json_schema': {name, schema, strict}, not both and not neither",
            )
        problem = schema_problem(self.output().schema)
        if problem is not None:
            raise PydanticCustomError(
                "invalid_schema",
                "the schema is not a valid JSON Schema: {problem}",
                {"problem": problem[:500]},
            )
        return self

    def output(self) -> OutputSchema:
        if self.json_schema is not None:
            return OutputSchema(
                self.json_schema.schema_, self.json_schema.name, self.json_schema.strict
            )
        assert self.schema_ is not None
        return OutputSchema(self.schema_)


_OPENAI_NAMES = {"json_object": ResponseFormat.json, "text": ResponseFormat.text}


def format_setting(value: Any) -> Any:
    """A name ('text', 'json') or a schema object, told apart by shape so that a bad one is
    reported once, as what it is meant to be, at response_format itself."""
    if value is None or isinstance(value, ResponseFormat | JsonSchemaFormat):
        return value
    if isinstance(value, str):
        if value in ResponseFormat.__members__.values():
            return ResponseFormat(value)
        raise PydanticCustomError(
            "enum",
            "Input should be 'text', 'json' or a JSON Schema object "
            '({"type": "json_schema", "schema": {…}}), not {value}',
            {"value": json.dumps(value[:40])},
        )
    if isinstance(value, dict) and value.keys() == {"type"} and value["type"] in _OPENAI_NAMES:
        # OpenAI's objects for the plain formats: {"type": "json_object"}, {"type": "text"}.
        return _OPENAI_NAMES[value["type"]]
    if isinstance(value, dict):
        try:
            return JsonSchemaFormat.model_validate(value)
        except ValidationError as exc:
            raise first_problem(exc) from None
    raise PydanticCustomError(
        "format_type", "Input should be 'text', 'json' or a JSON Schema object"
    )


def effective_format(fmt: ResponseFormat | JsonSchemaFormat | None) -> ResponseFormat:
    """The format asked of the upstream: a schema is asked for as JSON (then checked)."""
    if fmt is None:
        return ResponseFormat.text
    return ResponseFormat.json if isinstance(fmt, JsonSchemaFormat) else fmt
