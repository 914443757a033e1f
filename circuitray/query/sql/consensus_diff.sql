-- Two groups' consensus circuits side by side, edge by edge: what group_b gains, loses
-- and re-weights against group_a (groups are values of the graphs column `by`: two
-- constraint types, two checkpoints' steps, or with by = run two runs). Within each run
-- (across runs when by is run), every edge of either group's consensus_edges at or
-- above min_share in that group, with its share and mean weight over each group's
-- graphs (absent counts 0): change is gained (only in b), lost (only in a) or shared;
-- delta is b's mean weight minus a's. The largest changes first.
-- uses: consensus_keys, consensus_edges
-- param: group_a str = a -- the baseline group's value of `by`
-- param: group_b str = b -- the group compared with it
WITH sides AS (
    SELECT CASE WHEN group_by = 'run' THEN '' ELSE run END AS pair,
           CASE group_value WHEN $group_a THEN 'a' WHEN $group_b THEN 'b' END AS side,
           src_type, src_layer, src_feature, src_pos_from_end, src_token, src_supernode,
           dst_type, dst_layer, dst_feature, dst_pos_from_end, dst_token, dst_supernode,
           share, sum_weight / n_graphs AS weight
    FROM consensus_edges
    WHERE group_value IN ($group_a, $group_b)
),
a AS (SELECT * EXCLUDE (side) FROM sides WHERE side = 'a'),
b AS (SELECT * EXCLUDE (side) FROM sides WHERE side = 'b')
SELECT nullif(coalesce(a.pair, b.pair), '') AS run,
       coalesce(a.src_type, b.src_type) AS src_type,
       coalesce(a.src_layer, b.src_layer) AS src_layer,
       coalesce(a.src_feature, b.src_feature) AS src_feature,
       coalesce(a.src_pos_from_end, b.src_pos_from_end) AS src_pos_from_end,
       coalesce(a.src_token, b.src_token) AS src_token,
       coalesce(a.src_supernode, b.src_supernode) AS src_supernode,
       coalesce(a.dst_type, b.dst_type) AS dst_type,
       coalesce(a.dst_layer, b.dst_layer) AS dst_layer,
       coalesce(a.dst_feature, b.dst_feature) AS dst_feature,
       coalesce(a.dst_pos_from_end, b.dst_pos_from_end) AS dst_pos_from_end,
       coalesce(a.dst_token, b.dst_token) AS dst_token,
       coalesce(a.dst_supernode, b.dst_supernode) AS dst_supernode,
       CASE WHEN a.src_type IS NULL THEN 'gained' WHEN b.src_type IS NULL THEN 'lost'
            ELSE 'shared' END AS change,
       coalesce(a.share, 0) AS share_a, coalesce(b.share, 0) AS share_b,
       coalesce(a.weight, 0) AS weight_a, coalesce(b.weight, 0) AS weight_b,
       coalesce(b.weight, 0) - coalesce(a.weight, 0) AS delta
FROM a FULL OUTER JOIN b
    ON a.pair = b.pair
   AND a.src_type = b.src_type AND a.dst_type = b.dst_type
   AND a.src_layer IS NOT DISTINCT FROM b.src_layer
   AND a.src_feature IS NOT DISTINCT FROM b.src_feature
   AND a.src_pos_from_end IS NOT DISTINCT FROM b.src_pos_from_end
   AND a.src_token IS NOT DISTINCT FROM b.src_token
   AND a.src_supernode IS NOT DISTINCT FROM b.src_supernode
   AND a.dst_layer IS NOT DISTINCT FROM b.dst_layer
   AND a.dst_feature IS NOT DISTINCT FROM b.dst_feature
   AND a.dst_pos_from_end IS NOT DISTINCT FROM b.dst_pos_from_end
   AND a.dst_token IS NOT DISTINCT FROM b.dst_token
   AND a.dst_supernode IS NOT DISTINCT FROM b.dst_supernode
ORDER BY abs(delta) DESC, run, change, src_type, src_layer, src_feature, src_pos_from_end,
         src_token, src_supernode, dst_type, dst_layer, dst_feature, dst_pos_from_end,
         dst_token, dst_supernode;
