-- The error rows a run keeps: one per pair, and none for a pair that was scored after all.
-- Input views: items, errors.
SELECT e.* FROM errors e
ANTI JOIN items i USING (session_id, item_id)
QUALIFY row_number() OVER (PARTITION BY e.session_id, e.item_id ORDER BY e.session_id) = 1;
