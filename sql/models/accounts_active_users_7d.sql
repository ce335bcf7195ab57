-- Accounts with the number of distinct users active in the last 7 days.
-- Members come from group calls; activity from tracks. The 7 days end at the newest
-- track in the warehouse, so the model means the same on data loaded from an older
-- archive; use current_timestamp instead of w.ts for wall-clock time.
WITH window_end AS (
    SELECT max("timestamp") AS ts FROM {{ schema }}.tracks
),
members AS (
    SELECT DISTINCT group_id, user_id
    FROM {{ schema }}.groups
    WHERE group_id IS NOT NULL AND user_id IS NOT NULL
),
active AS (
    SELECT DISTINCT t.user_id
    FROM {{ schema }}.tracks AS t
    CROSS JOIN window_end AS w
    WHERE t.user_id IS NOT NULL AND t."timestamp" > w.ts - INTERVAL '7 days'
)
SELECT
    a.id AS account_id,
    a.name,
    a.industry,
    count(DISTINCT m.user_id) AS members,
    count(DISTINCT act.user_id) AS active_users_7d
FROM {{ schema }}.accounts AS a
JOIN members AS m ON m.group_id = a.id
LEFT JOIN active AS act ON act.user_id = m.user_id
GROUP BY a.id, a.name, a.industry
