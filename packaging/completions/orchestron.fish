# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_orchestron_global_optspecs
    string join \n log-format= h/help V/version
end

function __fish_orchestron_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_orchestron_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_orchestron_using_subcommand
    set -l cmd (__fish_orchestron_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c orchestron -n "__fish_orchestron_needs_command" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_needs_command" -s V -l version -d 'Print version'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "serve" -d 'Run the daemon: accept webhooks, store them durably, relay them to the brokers'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "check-config" -d 'Validate a config file (YAML, keys, routes, schemas) and exit non-zero on any problem'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "hash-key" -d 'Print the `sha256:` form of an API key read from stdin, for `sources.*.api_keys`, so the config file holds no plaintext key'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "dlq" -d 'Inspect, replay and purge the dead-letter queue'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "event" -d 'Look up one event by id'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "outbox" -d 'Inspect the outbox'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "fleet" -d 'The fleet of instances sharing one PostgreSQL (`sync:`)'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "sync" -d 'The fleet\'s PostgreSQL schema'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "store" -d 'The store file'
complete -c orchestron -n "__fish_orchestron_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand serve" -s c -l config -d 'Config file (YAML)' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand serve" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand serve" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand check-config" -s c -l config -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand check-config" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand check-config" -l postgres -d 'Also connect to the fleet\'s PostgreSQL (`sync:`) and report its schema version. Off by default: the unit runs check-config before every start, and the daemon starts (and works alone) while PostgreSQL is down'
complete -c orchestron -n "__fish_orchestron_using_subcommand check-config" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand hash-key" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand hash-key" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -f -a "list" -d 'List dead-lettered events, newest first'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -f -a "show" -d 'Show one entry, with its body and every failed destination'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -f -a "replay" -d 'Send entries back to the outbox, for the destinations that failed only'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -f -a "purge" -d 'Delete entries for good'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and not __fish_seen_subcommand_from list show replay purge help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l source -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l type -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l destination -d 'Matches destinations whose label contains this (e.g. `kafka:orders`)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l reason -d 'unroutable, rejected, max_attempts, expired or no_route' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l limit -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l cursor -d 'Continue a listing (the `next_cursor` of the previous page)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l fleet -d 'Every instance\'s entries, from the fleet\'s PostgreSQL (`sync:`), with the instance that holds each'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l source -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l type -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l destination -d 'Matches destinations whose label contains this (e.g. `kafka:orders`)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l reason -d 'unroutable, rejected, max_attempts, expired or no_route' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l all
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l fleet -d 'The entry may be another instance\'s (`dlq list --fleet`): this one takes it over and publishes it'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from replay" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l source -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l type -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l destination -d 'Matches destinations whose label contains this (e.g. `kafka:orders`)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l reason -d 'unroutable, rejected, max_attempts, expired or no_route' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l all
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from purge" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "list" -d 'List dead-lettered events, newest first'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one entry, with its body and every failed destination'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "replay" -d 'Send entries back to the outbox, for the destinations that failed only'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "purge" -d 'Delete entries for good'
complete -c orchestron -n "__fish_orchestron_using_subcommand dlq; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -f -a "show" -d 'Where one event is: pending (for which destinations, with its attempts), dead-lettered, or in neither (delivered everywhere and removed, or never accepted here)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and not __fish_seen_subcommand_from show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from help" -f -a "show" -d 'Where one event is: pending (for which destinations, with its attempts), dead-lettered, or in neither (delivered everywhere and removed, or never accepted here)'
complete -c orchestron -n "__fish_orchestron_using_subcommand event; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -f -a "stats" -d 'Pending events, oldest age, per-destination backlog'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and not __fish_seen_subcommand_from stats help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from stats" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "stats" -d 'Pending events, oldest age, per-destination backlog'
complete -c orchestron -n "__fish_orchestron_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -f -a "status" -d 'Every instance of the fleet: lease age, epoch, outbox and DLQ sizes, version'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and not __fish_seen_subcommand_from status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -s c -l config -d 'Config file: where the admin API listens, its token, the store path' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -l admin-url -d 'Admin API base URL (default: http:// + admin.listen from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -l token -d 'Admin bearer token (default: admin.token from the config)' -r
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -l json -d 'Print JSON instead of a table'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -l offline -d 'Read the store file directly (daemon stopped; read-only commands only)'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from status" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "status" -d 'Every instance of the fleet: lease age, epoch, outbox and DLQ sizes, version'
complete -c orchestron -n "__fish_orchestron_using_subcommand fleet; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and not __fish_seen_subcommand_from migrate help" -s c -l config -d 'Config file (YAML), whose `sync:` section names the database' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and not __fish_seen_subcommand_from migrate help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and not __fish_seen_subcommand_from migrate help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and not __fish_seen_subcommand_from migrate help" -f -a "migrate" -d 'Apply the fleet\'s schema migrations to the configured PostgreSQL now'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and not __fish_seen_subcommand_from migrate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and __fish_seen_subcommand_from migrate" -s c -l config -d 'Config file (YAML), whose `sync:` section names the database' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and __fish_seen_subcommand_from migrate" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and __fish_seen_subcommand_from help" -f -a "migrate" -d 'Apply the fleet\'s schema migrations to the configured PostgreSQL now'
complete -c orchestron -n "__fish_orchestron_using_subcommand sync; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and not __fish_seen_subcommand_from compact help" -s c -l config -d 'Config file (YAML), whose `store.path` names the file' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and not __fish_seen_subcommand_from compact help" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and not __fish_seen_subcommand_from compact help" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and not __fish_seen_subcommand_from compact help" -f -a "compact" -d 'Give the free pages inside the store file back to the filesystem (the daemon stopped; a running daemon does it by itself in a quiet moment)'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and not __fish_seen_subcommand_from compact help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and __fish_seen_subcommand_from compact" -s c -l config -d 'Config file (YAML), whose `store.path` names the file' -r -F
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and __fish_seen_subcommand_from compact" -l log-format -d 'Log line format on stderr (default: `log.format` from the config, else text)' -r -f -a "text\t'Human-readable, for terminals'
json\t'One JSON object per line, for journald and log shippers'"
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and __fish_seen_subcommand_from compact" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "compact" -d 'Give the free pages inside the store file back to the filesystem (the daemon stopped; a running daemon does it by itself in a quiet moment)'
complete -c orchestron -n "__fish_orchestron_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "serve" -d 'Run the daemon: accept webhooks, store them durably, relay them to the brokers'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "check-config" -d 'Validate a config file (YAML, keys, routes, schemas) and exit non-zero on any problem'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "hash-key" -d 'Print the `sha256:` form of an API key read from stdin, for `sources.*.api_keys`, so the config file holds no plaintext key'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "dlq" -d 'Inspect, replay and purge the dead-letter queue'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "event" -d 'Look up one event by id'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "outbox" -d 'Inspect the outbox'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "fleet" -d 'The fleet of instances sharing one PostgreSQL (`sync:`)'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "sync" -d 'The fleet\'s PostgreSQL schema'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "store" -d 'The store file'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and not __fish_seen_subcommand_from serve check-config hash-key dlq event outbox fleet sync store help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "list" -d 'List dead-lettered events, newest first'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "show" -d 'Show one entry, with its body and every failed destination'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "replay" -d 'Send entries back to the outbox, for the destinations that failed only'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from dlq" -f -a "purge" -d 'Delete entries for good'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from event" -f -a "show" -d 'Where one event is: pending (for which destinations, with its attempts), dead-lettered, or in neither (delivered everywhere and removed, or never accepted here)'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "stats" -d 'Pending events, oldest age, per-destination backlog'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from fleet" -f -a "status" -d 'Every instance of the fleet: lease age, epoch, outbox and DLQ sizes, version'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from sync" -f -a "migrate" -d 'Apply the fleet\'s schema migrations to the configured PostgreSQL now'
complete -c orchestron -n "__fish_orchestron_using_subcommand help; and __fish_seen_subcommand_from store" -f -a "compact" -d 'Give the free pages inside the store file back to the filesystem (the daemon stopped; a running daemon does it by itself in a quiet moment)'
