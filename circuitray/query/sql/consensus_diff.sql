-- Two groups' consensus circuits side by side, edge by edge: what group_b gains, loses
-- and re-weights against group_a (groups are values of the graphs column `by`: two
-- constraint types, two checkpoints' steps, or with by = run two runs). Within each run
-- (across runs when by is run), every edge (keyed as consensus_edges keys it) at or
-- above min_share in either group, with its share and mean weight over each group's
-- graphs (absent counts 0) however small: an edge is in a group when some of its
-- graphs hold it and their share is at least min_share; change is gained (in b, not
-- in a), lost (the reverse) or shared (in both); delta is
-- b's mean weight minus a's. The largest changes first. Only edges between nodes at
-- min_share in one of the groups can qualify, so only those are aggregated (exact).
-- uses: consensus_keys
-- param: group_a str = -- the baseline group's value of `by` (default: the first in order)
-- param: group_b str = -- the group compared with it (default: the next one)
-- param: min_share float = 0.5 -- keep edges at or above this share in either group
WITH groups AS (SELECT DISTINCT group_by, group_value FROM consensus_keys),
picked AS (  -- the groups asked for; by default the first two in order
    SELECT coalesce(nullif($group_a, ''), (SELECT min(group_value) FROM groups)) AS ga
),
checked AS (
    SELECT p.ga,
           coalesce(nullif($group_b, ''),
                    (SELECT min(group_value) FROM groups WHERE group_value > p.ga)) AS gb,
           (SELECT any_value(group_by) FROM groups) AS by_name
    FROM picked p
),
valid AS (
    SELECT ga, gb, CASE
        WHEN ga = gb THEN error('group_a and group_b are the same group')
        WHEN $group_a <> '' AND NOT EXISTS (SELECT 1 FROM groups WHERE group_value = ga)
            THEN error('group_a: no ok graph has ' || by_name || ' = ' || ga)
        WHEN $group_b <> '' AND NOT EXISTS (SELECT 1 FROM groups WHERE group_value = gb)
            THEN error('group_b: no ok graph has ' || by_name || ' = ' || gb)
        ELSE gb IS NOT NULL  -- by default, a run of one group has nothing to compare
    END AS ok
    FROM checked
),
two AS (
    SELECT k.*, CASE WHEN k.group_by = 'run' THEN '' ELSE k.run END AS pair,
           CASE WHEN k.group_value = v.ga THEN 'a' ELSE 'b' END AS side
    FROM consensus_keys k, valid v
    WHERE k.group_value IN (v.ga, v.gb) AND v.ok
),
shared_keys AS (  -- keys at min_share in either group: only their edges can qualify
    SELECT DISTINCT pair, node_type, layer, feature, pos_from_end, token, supernode
    FROM (
        SELECT pair, side, node_type, layer, feature, pos_from_end, token, supernode
        FROM two
        GROUP BY ALL
        HAVING count(DISTINCT graph_id) / any_value(n_graphs) >= $min_share
    )
),
kept AS (
    SELECT t.*, t.graph_id::BIGINT * 4294967296 + t.node_id AS graph_node
    FROM two t
    SEMI JOIN shared_keys s
        ON t.pair = s.pair AND t.node_type = s.node_type
       AND t.layer IS NOT DISTINCT FROM s.layer AND t.feature IS NOT DISTINCT FROM s.feature
       AND t.pos_from_end IS NOT DISTINCT FROM s.pos_from_end
       AND t.token IS NOT DISTINCT FROM s.token
       AND t.supernode IS NOT DISTINCT FROM s.supernode
),
per_graph AS (
    SELECT s.pair, s.side, s.n_graphs, e.graph_id,
           s.node_type AS src_type, s.layer AS src_layer, s.feature AS src_feature,
           s.pos_from_end AS src_pos_from_end, s.token AS src_token,
           s.supernode AS src_supernode,
           d.node_type AS dst_type, d.layer AS dst_layer, d.feature AS dst_feature,
           d.pos_from_end AS dst_pos_from_end, d.token AS dst_token,
           d.supernode AS dst_supernode,
           sum(e.weight) AS weight
    FROM edges e
    JOIN kept s ON s.run = e.run AND s.graph_node = e.graph_id::BIGINT * 4294967296 + e.src
    JOIN kept d ON d.run = e.run AND d.graph_node = e.graph_id::BIGINT * 4294967296 + e.dst
    WHERE s.supernode IS NULL OR s.supernode IS DISTINCT FROM d.supernode
    GROUP BY ALL
),
sides AS (
    SELECT pair, src_type, src_layer, src_feature, src_pos_from_end, src_token,
           src_supernode, dst_type, dst_layer, dst_feature, dst_pos_from_end, dst_token,
           dst_supernode,
           coalesce(round(count(*) FILTER (WHERE side = 'a')
                          / any_value(n_graphs) FILTER (WHERE side = 'a'), 4), 0) AS share_a,
           coalesce(round(count(*) FILTER (WHERE side = 'b')
                          / any_value(n_graphs) FILTER (WHERE side = 'b'), 4), 0) AS share_b,
           coalesce(sum(weight) FILTER (WHERE side = 'a')
                    / any_value(n_graphs) FILTER (WHERE side = 'a'), 0) AS weight_a,
           coalesce(sum(weight) FILTER (WHERE side = 'b')
                    / any_value(n_graphs) FILTER (WHERE side = 'b'), 0) AS weight_b
    FROM per_graph
    GROUP BY pair, src_type, src_layer, src_feature, src_pos_from_end, src_token,
             src_supernode, dst_type, dst_layer, dst_feature, dst_pos_from_end, dst_token,
             dst_supernode
)
SELECT nullif(pair, '') AS run, src_type, src_layer, src_feature, src_pos_from_end,
       src_token, src_supernode, dst_type, dst_layer, dst_feature, dst_pos_from_end,
       dst_token, dst_supernode,
       CASE WHEN in_a AND in_b THEN 'shared' WHEN in_b THEN 'gained' ELSE 'lost' END
           AS change,
       share_a, share_b, weight_a, weight_b, weight_b - weight_a AS delta
FROM (
    SELECT *, share_a > 0 AND share_a >= $min_share AS in_a,
           share_b > 0 AND share_b >= $min_share AS in_b
    FROM sides
)
WHERE in_a OR in_b
ORDER BY abs(delta) DESC, run, change, src_type, src_layer, src_feature, src_pos_from_end,
         src_token, src_supernode, dst_type, dst_layer, dst_feature, dst_pos_from_end,
         dst_token, dst_supernode;
