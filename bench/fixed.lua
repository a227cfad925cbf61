-- wrk script for bench/run: one fixed POST of $BENCH_BODY ($BENCH_CT) with $BENCH_SIG in header
-- $BENCH_SIG_HEADER (empty: no signature header).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = os.getenv("BENCH_CT")
local h = os.getenv("BENCH_SIG_HEADER")
if h ~= nil and h ~= "" then
  wrk.headers[h] = os.getenv("BENCH_SIG")
end
