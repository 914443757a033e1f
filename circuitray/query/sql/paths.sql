-- Per graph: the strongest paths from a token node to the target logit: a graph
-- attributed to a fixed target (run --target answer or contrast) has that one logit
-- node; a top-logit graph's is the expected completion's logit, or the most probable
-- logit where the completion was not among the top logits. A path's
-- strength is the product, over its edges, of the edge's share of |weight| into its
-- destination node (circuit-tracer's normalised adjacency, over kept edges): the
-- fraction of the target's input that flows along the path. Found by beam search
-- backwards from the target in a recursive CTE, keeping the beam strongest partial
-- paths per graph at each hop. Graphs are all ok graphs, or a deterministic sample of
-- max_graphs per run and type; use graph_id for one graph. The path's label names its
-- nodes, a feature with its label in brackets where the run's feature table has one.
-- param: graph_id int = -1 -- one graph (-1: every graph, subject to max_graphs)
-- param: run str = * -- one run's graphs (*: every run's)
-- param: top_k int = 3 -- paths per graph
-- param: beam int = 8 -- partial paths kept per graph at each hop
-- param: max_graphs int = 500 -- sample this many graphs per run and type (0: all)
WITH RECURSIVE
ok AS (
    SELECT run, graph_id, coalesce(constraint_type, '(none)') AS constraint_type,
           target_token
    FROM graphs
    WHERE status = 'ok' AND ($graph_id < 0 OR graph_id = $graph_id)
        AND ($run = '*' OR run = $run)
    -- Sample by a hash of the prompt id: the same prompts in every run (pairable).
    QUALIFY $max_graphs <= 0 OR row_number() OVER (
        PARTITION BY run, coalesce(constraint_type, '(none)')
        ORDER BY hash(prompt_id), graph_id
    ) <= $max_graphs
),
target AS (
    SELECT n.run, n.graph_id,
           arg_max(n.node_id, coalesce((n.token = ok.target_token)::INT, 0) * 2
                   + coalesce(n.logit_prob, 0)) AS node_id
    FROM nodes n JOIN ok USING (run, graph_id)
    WHERE n.node_type = 'logit'
    GROUP BY n.run, n.graph_id
),
-- Each edge's share of its destination's incoming |weight|. A partial path extends by
-- at most beam edges per node, so only each node's beam strongest inputs can matter.
inflow AS MATERIALIZED (
    SELECT run, graph_id, dst, src, src_type, sign(weight)::INT AS sign,
           abs(weight) / sum(abs(weight)) OVER (PARTITION BY run, graph_id, dst) AS share
    FROM edges SEMI JOIN ok USING (run, graph_id)
    QUALIFY row_number() OVER (
        PARTITION BY run, graph_id, dst ORDER BY abs(weight) DESC, src
    ) <= $beam
),
walk(run, graph_id, node, strength, sign, path, via_error, done) AS (
    SELECT run, graph_id, node_id, 1.0::DOUBLE, 1, [node_id], false, false FROM target
    UNION ALL
    SELECT w.run, w.graph_id, i.src, w.strength * i.share, w.sign * i.sign,
           list_prepend(i.src, w.path), w.via_error OR i.src_type = 'error',
           i.src_type = 'token'
    FROM walk w
    JOIN inflow i ON i.run = w.run AND i.graph_id = w.graph_id AND i.dst = w.node
    WHERE NOT w.done
    QUALIFY row_number() OVER (
        PARTITION BY w.run, w.graph_id ORDER BY w.strength * i.share DESC, i.src
    ) <= $beam
),
best AS (
    SELECT run, graph_id, strength, sign, path, via_error,
           row_number() OVER (
               PARTITION BY run, graph_id ORDER BY strength DESC, path
           ) AS rank
    FROM walk WHERE done
    QUALIFY rank <= $top_k
),
labels AS (
    SELECT b.run, b.graph_id, b.rank,
           string_agg(
               CASE n.node_type
                   WHEN 'feature' THEN format('L{}/{}@{}', n.layer, n.feature, n.pos)
                       || coalesce(' [' || f.label || ']', '')
                   WHEN 'error' THEN format('err L{}@{}', n.layer, n.pos)
                   WHEN 'token' THEN format('tok {}@{}', coalesce(n.token, n.token_id::VARCHAR), n.pos)
                   ELSE format('logit {}', coalesce(n.token, n.token_id::VARCHAR))
               END, ' -> ' ORDER BY u.i
           ) AS label
    FROM best b, unnest(b.path) WITH ORDINALITY AS u(node, i)
    JOIN nodes n ON n.run = b.run AND n.graph_id = b.graph_id AND n.node_id = u.node
    LEFT JOIN features f ON f.run = n.run AND f.layer = n.layer AND f.feature = n.feature
        AND n.node_type = 'feature'
    GROUP BY b.run, b.graph_id, b.rank
)
SELECT ok.run, ok.constraint_type, b.graph_id, b.rank, len(b.path) - 1 AS hops,
       round(b.strength, 6) AS strength, b.sign, b.via_error, b.path, l.label
FROM best b
JOIN ok USING (run, graph_id)
JOIN labels l USING (run, graph_id, rank)
ORDER BY ok.run, b.graph_id, b.rank;
