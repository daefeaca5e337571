# Readiness checks in plain bash (curl and redis-cli may be missing), sourced by run-local.sh
# and bench.sh. Each returns 0 when the service answers.

port_busy() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; } # PORT: something listens there
http_ok() { # PORT PATH: true when GET answers 2xx
    local status=""
    { printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&3 && read -r -t 2 _ status _ <&3; } \
        2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    [[ "$status" == 2* ]]
}
redis_ok() { # PORT: true when PING answers PONG
    local reply=""
    { printf 'PING\r\n' >&3 && read -r -t 2 reply <&3; } 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$1" || return 1
    [[ "$reply" == +PONG* ]]
}
