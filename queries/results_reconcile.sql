-- The manifest's reconciliation of a scoring run: every selected pair is scored or failed, once.
-- Input views: selected(session_id, pos), wanted(item_id), items, errors.
WITH pairs AS (
    SELECT s.session_id, w.item_id FROM selected s, wanted w
),
scored AS (
    SELECT DISTINCT session_id, item_id FROM items SEMI JOIN pairs USING (session_id, item_id)
),
failed AS (
    SELECT DISTINCT session_id, item_id FROM errors SEMI JOIN pairs USING (session_id, item_id)
)
SELECT
    (SELECT count(*) FROM pairs) AS items_in,
    (SELECT count(*) FROM scored) AS items_scored,
    (SELECT count(*) FROM failed) AS items_errors,
    (SELECT count(*) FROM pairs ANTI JOIN scored USING (session_id, item_id)
                                ANTI JOIN failed USING (session_id, item_id)) AS missing,
    (SELECT count(*) FROM scored SEMI JOIN failed USING (session_id, item_id)) AS in_both,
    (SELECT count(DISTINCT session_id) FROM failed) AS sessions_with_errors;
