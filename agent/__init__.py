"""The agent: one episode runner (observe → prompt → policy → ground → safety → execute → feedback)."""
