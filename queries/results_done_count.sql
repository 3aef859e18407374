-- How many selected pairs are already done (scored or failed).
-- Input views: selected(session_id, pos), wanted(item_id), items, errors.
WITH done AS (
    SELECT session_id, item_id FROM items
    UNION
    SELECT session_id, item_id FROM errors
)
SELECT count(*) FROM done
SEMI JOIN selected USING (session_id)
SEMI JOIN wanted USING (item_id);
