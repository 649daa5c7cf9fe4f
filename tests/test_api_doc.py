"""docs/api.md stays true to the code: its route tables list exactly the app's routes (both ways), it
describes every request field of the OpenAI and Anthropic schemas, and every error code the server sends."""

from __future__ import annotations

import re

from pydantic import BaseModel
from starlette.routing import Route

from server.anthropic.schemas import CountTokensRequest, MessagesRequest
from server.app import create_app
from server.openai.completion_schemas import CompletionRequest
from server.openai.schemas import ChatCompletionRequest
from server.settings import Settings
from tests.launch import ROOT

API_DOC = ROOT / "docs" / "api.md"
ROW = re.compile(r"^\| (GET|POST|PUT|PATCH|DELETE|HEAD) \| `([^`]+)` \|", re.M)
# Where the surfaces being added go; each is a `### <title>` section of "## Routes".
SURFACES = (
    "OpenAI",
    "Anthropic",
    "OpenAI Responses",
    "Embeddings",
    "Tokenize and detokenize",
    "Ollama",
    "Service",
)


def routes_section() -> str:
    text = API_DOC.read_text(encoding="utf-8")
    start = text.index("\n## Routes\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def documented_routes() -> list[tuple[str, str]]:
    return [(method, path) for method, path in ROW.findall(routes_section())]


def app_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the app (HEAD, which Starlette adds to GET, left out)."""
    app = create_app(Settings(config_path=ROOT / "models.yaml"))  # nothing loads before the lifespan
    found = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: a route kind this test does not read"
        for method in route.methods or ():
            if method != "HEAD":
                found.add((method, route.path_format))
    return found


def test_the_route_tables_list_exactly_the_apps_routes() -> None:
    documented = documented_routes()
    assert len(documented) == len(set(documented)), "a route is listed twice"
    app = app_routes()
    assert len(app) >= 15
    assert sorted(app - set(documented)) == [], "routes of the app missing from docs/api.md"
    assert sorted(set(documented) - app) == [], "routes in docs/api.md the app does not have"


def test_the_route_tables_have_a_section_per_surface() -> None:
    headings = re.findall(r"^### (.+?)(?: \(reserved\))?$", routes_section(), re.M)
    assert headings == list(SURFACES)


def test_the_row_pattern_reads_a_row() -> None:
    assert ROW.findall("| GET | `/v1/models/{model_id}` | one model |") == [("GET", "/v1/models/{model_id}")]


def _fields(schema: type[BaseModel]) -> set[str]:
    return {field.alias or name for name, field in schema.model_fields.items()}


def test_every_request_field_is_described() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    schemas = (ChatCompletionRequest, CompletionRequest, MessagesRequest, CountTokensRequest)
    fields = set().union(*(_fields(schema) for schema in schemas))
    assert {"messages", "prompt", "max_tokens", "stop_sequences", "tool_choice"} <= fields
    missing = sorted(name for name in fields if f"`{name}`" not in text)
    assert missing == []


def test_every_error_code_the_server_sends_is_described() -> None:
    text = API_DOC.read_text(encoding="utf-8")
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "server").rglob("*.py"))
    codes = set(re.findall(r"""\bcode=["']([a-z_]+)["']""", sources))
    codes |= {"missing_required_parameter", "invalid_value"}  # from validation errors
    assert {"context_length_exceeded", "queue_full", "model_not_found"} <= codes
    missing = sorted(code for code in codes if f"`{code}`" not in text)
    assert missing == []


def test_the_code_cites_docs_api_md() -> None:
    citing = [
        p
        for p in (ROOT / "server").rglob("*.py")
        if re.search(r"(?<![/\w])api\.md", p.read_text(encoding="utf-8"))
    ]
    assert citing == [], "cite docs/api.md by its path"
    assert API_DOC.is_file()
