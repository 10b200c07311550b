#!/usr/bin/env bash
# Start the local services the test suite needs, if they are down.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432; }

if ! pg_up; then
    echo "services: starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { echo "services: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
echo "services: PostgreSQL is up"
