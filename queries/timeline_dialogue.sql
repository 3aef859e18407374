-- timeline_dialogue: the turns of the sessions' stretches asked for, e.g. the dialogue around the
-- largest drops the report shows.
-- Input views:
--   sessions  a corpus's sessions/ Parquet (see timeline_points.sql)
--   stretches (session_id VARCHAR, first_turn INTEGER, last_turn INTEGER, rank INTEGER)
-- Parameters: none.
-- Output: rank, session_id, turn_index, role, text, strategy, rating.
SELECT x.rank, t.session_id, t.turn_index, t.turn.role AS role, t.turn.text AS text,
       t.turn.strategy AS strategy, t.turn.rating AS rating
FROM (
    SELECT session_id, generate_subscripts(turns, 1) - 1 AS turn_index, unnest(turns) AS turn
    FROM sessions
    WHERE session_id IN (SELECT session_id FROM stretches)
) t
JOIN stretches x
  ON x.session_id = t.session_id AND t.turn_index BETWEEN x.first_turn AND x.last_turn
ORDER BY x.rank, t.turn_index;
