-- How many selected error rows --retry-errors releases.
-- Input views: selected(session_id, pos), wanted(item_id), errors, released_reasons(reason).
SELECT count(*) FROM errors e
WHERE e.error_reason IN (SELECT reason FROM released_reasons)
  AND e.session_id IN (SELECT session_id FROM selected)
  AND e.item_id IN (SELECT item_id FROM wanted);
