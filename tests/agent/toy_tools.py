"""A two-turn notes world with OpenAI tools, for testing the runner without any package: the user
asks for notes to be added, then for one to be deleted. Verdict: the notes equal the target."""
from envs.base import Action, ActionSpace, Observation, StepResult, Task

TOOLS = [
    {"type": "function", "function": {"name": "add_note", "description": "Add a note.", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}, "pinned": {"type": "boolean"}},
        "required": ["text"]}}},
    {"type": "function", "function": {"name": "delete_note", "description": "Delete note number `index`.",
        "parameters": {"type": "object", "properties": {"index": {"type": "integer"}}, "required": ["index"]}}},
    {"type": "function", "function": {"name": "list_notes", "description": "List the notes.",
        "parameters": {"type": "object", "properties": {}}}},
]
TURNS = ["Add the notes 'milk' and 'eggs'.", "Now delete the first note."]
GOLD = [[Action("add_note", {"text": "milk"}), Action("add_note", {"text": "eggs"})], [Action("delete_note", {"index": 0})]]


class NotesEnv:
    name = "notes"

    def reset(self, task: Task) -> Observation:
        self.notes, self.turn, self.done, self._success, self.executed = [], 0, False, False, []
        return Observation(request="\n".join(TURNS), state=self._state(), user_messages=[TURNS[0]])

    def _state(self) -> str:
        return '{"notes": %s}' % repr(self.notes).replace("'", '"')

    def step(self, action: Action) -> StepResult:
        self.executed.append(action)
        msgs, feedback = [], ""
        if action.name == "respond":
            self.turn += 1
            if self.turn == len(TURNS):
                self.done, self._success = True, self.notes == ["eggs"]
            else:
                msgs = [TURNS[self.turn]]
        elif action.name == "add_note":
            self.notes.append(action.arguments["text"])
            feedback = f"added note {len(self.notes) - 1}"
        elif action.name == "delete_note":
            feedback = f"deleted {self.notes.pop(action.arguments['index'])!r}"
        else:
            feedback = repr(self.notes)
        return StepResult(Observation("\n".join(TURNS), self._state(), user_messages=msgs), float(self._success),
                          feedback, self._success, self.done, progress=self.turn / len(TURNS))

    def action_names(self):
        return [t["function"]["name"] for t in TOOLS]

    def action_space(self) -> ActionSpace:
        return ActionSpace("tools", self.action_names(), TOOLS, message_action="respond", turns=True)

    def precondition(self, action: Action) -> str:
        if action.name == "delete_note" and not 0 <= action.arguments["index"] < len(self.notes):
            return f"there is no note {action.arguments['index']} (there are {len(self.notes)})"
        return ""

    def action_safety(self, action: Action) -> str:
        return "confirm" if action.name == "delete_note" else "allowed"

    def make_expert(self):
        env = self

        class Gold:
            emitted = set()

            def act(self):
                if env.turn in self.emitted or env.done:
                    return "Done."
                self.emitted.add(env.turn)
                return GOLD[env.turn]

        return Gold()

    @property
    def success(self) -> bool:
        return self._success

    def close(self) -> None:
        pass
