-- Users who ordered, with their lifetime order revenue (Segment's Order Completed).
-- One row per user: the key, user_id, is unique and never NULL.
SELECT
    u.id AS user_id,
    u.email,
    u.plan,
    count(o.id) AS orders,
    -- numeric(18, 2): a float sum can differ in its last bits between runs, which
    -- would make every row look changed.
    CAST(sum(o.revenue) AS numeric(18, 2)) AS lifetime_revenue,
    max(o."timestamp") AS last_order_at
FROM {{ schema }}.users AS u
JOIN {{ schema }}.order_completed AS o ON o.user_id = u.id
GROUP BY u.id, u.email, u.plan
