"""Two crews, one called `crew`, neither named: each is named after the file and its attribute,
under `python several_crews.py` (which prints both runs' crew names) and `crewflow run`."""

import json

from crewflow import Agent, Crew, Task

agent = Agent(role="Writer", goal="Write", llm="offline")
crew = Crew(tasks=[Task("Main", agent=agent)], store=None)
side = Crew(tasks=[Task("Side", agent=agent)], store=None)
main_crew = crew  # the same crew under a second name is still one crew

if __name__ == "__main__":
    print(json.dumps([crew.kickoff_sync().crew, side.kickoff_sync().crew]))
