#!/usr/bin/env bash
# Make sure a Redis server answers at $REDIS_URL (default redis://127.0.0.1:6379/0).
# If none answers and the URL is local: start redis-server (installing it with apt-get if missing).
set -euo pipefail
url="${RLHF_REDIS_URL:-${REDIS_URL:-redis://127.0.0.1:6379/0}}"
hostport="${url#redis://}"; hostport="${hostport#*@}"; hostport="${hostport%%/*}"
host="${hostport%%:*}"; port="${hostport##*:}"; [ "$port" = "$host" ] && port=6379
ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && timeout 2 head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
if ping; then echo "redis: answering at $host:$port"; exit 0; fi
case "$host" in 127.0.0.1|localhost|::1) ;; *)
  echo "redis: nothing answers at $url. Start a Redis server there or set REDIS_URL." >&2; exit 1;;
esac
if ! command -v redis-server >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "redis: installing redis-server with apt-get"
    (apt-get install -y -q redis-server >/dev/null 2>&1) || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)
  else
    echo "redis: nothing answers at $url and redis-server is not installed." >&2
    echo "       Install it (apt-get install redis-server / brew install redis) or set REDIS_URL." >&2
    exit 1
  fi
fi
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no >/dev/null
for _ in $(seq 50); do ping && { echo "redis: started redis-server on $host:$port"; exit 0; }; sleep 0.1; done
echo "redis: started redis-server but it does not answer on $host:$port" >&2; exit 1
