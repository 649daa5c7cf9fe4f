"""The OpenAI Agents SDK (`openai-agents`) running an agent with one function tool against Hearth's
/v1/responses, end to end. `tool_choice="required"` has the grammar force the call (the 135M model
would not reliably make it), and `stop_on_first_tool` makes the tool's result the final output."""

from __future__ import annotations

import asyncio

import openai
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

from tests.launch import MODEL, Server


def test_an_agent_calls_its_tool_through_the_responses_api(server: Server) -> None:
    set_tracing_disabled(True)  # traces would be sent to api.openai.com
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city.

        Args:
            city: The city's name.
        """
        cities.append(city)
        return f"It is sunny in {city}."

    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0) as client:
            agent = Agent(
                name="weather",
                instructions="You answer questions about the weather using your tools.",
                tools=[get_weather],
                model=OpenAIResponsesModel(model=MODEL, openai_client=client),
                model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=60),
                tool_use_behavior="stop_on_first_tool",
            )
            result = await Runner.run(agent, "What is the weather like in Paris?", max_turns=2)
            return str(result.final_output)

    output = asyncio.run(run())
    assert len(cities) == 1 and cities[0]
    assert output == f"It is sunny in {cities[0]}."
