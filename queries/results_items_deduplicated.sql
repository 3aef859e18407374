-- One row per (session_id, item_id) of a run's items. Input view: items.
SELECT * FROM items
QUALIFY row_number() OVER (PARTITION BY session_id, item_id ORDER BY session_id) = 1;
