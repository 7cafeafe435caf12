# The official image's contract, the part compose.scale.yaml uses: POSTGRES_USER, POSTGRES_PASSWORD,
# POSTGRES_DB; UTF-8 (psycopg reads SQL_ASCII text as bytes); 5432 on every interface, with passwords.
set -e
DATA=/var/lib/postgresql/data
if [ ! -s "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA" && chown postgres:postgres "$DATA"
  echo "$POSTGRES_PASSWORD" > /tmp/pw
  su postgres -c "initdb -D $DATA -U $POSTGRES_USER --pwfile=/tmp/pw --auth=scram-sha-256 --encoding=UTF8 --locale=C" >/dev/null
  rm /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$DATA/pg_hba.conf"
  su postgres -c "pg_ctl -D $DATA -o '-c listen_addresses=' -w start" >/dev/null
  PGPASSWORD="$POSTGRES_PASSWORD" psql -h /var/run/postgresql -U "$POSTGRES_USER" -d postgres \
    -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null 2>&1 || true
  su postgres -c "pg_ctl -D $DATA -w stop" >/dev/null
fi
mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql
exec su postgres -c "postgres -D $DATA -c listen_addresses=*"
