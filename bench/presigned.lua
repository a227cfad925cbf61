-- wrk script for bench/run: each request is the next line of $BENCH_REQS ("<signature>\t<body>", made by
-- bench_helper), POSTed to $BENCH_PATH with the signature in header $BENCH_SIG_HEADER. The lines are split
-- between wrk's threads (thread k takes lines k, k+T, k+2T, ...; T = $BENCH_THREADS), so every request is
-- distinct until a thread runs out of lines and starts again from its first one.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

function init(args)
  local nthreads = tonumber(os.getenv("BENCH_THREADS"))
  local path = os.getenv("BENCH_PATH")
  local ct = os.getenv("BENCH_CT")
  local sig_header = os.getenv("BENCH_SIG_HEADER")
  reqs = {}
  local i = 0
  for line in io.lines(os.getenv("BENCH_REQS")) do
    if i % nthreads == tid then
      local tab = line:find("\t", 1, true)
      local headers = { ["Content-Type"] = ct }
      headers[sig_header] = line:sub(1, tab - 1)
      reqs[#reqs + 1] = wrk.format("POST", path, headers, line:sub(tab + 1))
    end
    i = i + 1
  end
  idx = 0
end

function request()
  idx = idx + 1
  if idx > #reqs then
    idx = 1
  end
  return reqs[idx]
end
