"""Stage 4: evaluate agents with Ray actors; metrics, reports, replays."""
