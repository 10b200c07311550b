#!/usr/bin/env bash
# Start the local services the test suite needs (PostgreSQL, Redis), if they are down.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

if ! pg_up; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
echo "services: PostgreSQL is up"

redis_up() { redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; }

if ! redis_up; then
    echo "services: starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 60); do redis_up && break; sleep 0.5; done
fi
redis_up || { echo "services: Redis is not answering on 127.0.0.1:6379" >&2; exit 1; }
echo "services: Redis is up"
