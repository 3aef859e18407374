-- The error rows that stay when --retry-errors releases the selected ones with the given reasons.
-- Input views: selected(session_id, pos), wanted(item_id), errors, released_reasons(reason).
SELECT e.* FROM errors e
WHERE NOT (e.error_reason IN (SELECT reason FROM released_reasons)
           AND e.session_id IN (SELECT session_id FROM selected)
           AND e.item_id IN (SELECT item_id FROM wanted));
