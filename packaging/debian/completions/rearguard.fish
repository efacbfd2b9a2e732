# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_rearguard_global_optspecs
    string join \n log-format= h/help V/version
end

function __fish_rearguard_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_rearguard_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_rearguard_using_subcommand
    set -l cmd (__fish_rearguard_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c rearguard -n "__fish_rearguard_needs_command" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c rearguard -n "__fish_rearguard_needs_command" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "check" -d 'Validate configuration files; print each rule\'s worst-case detection time'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "run" -d 'Run the watchdog'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "replay" -d 'Replay recorded readings through a configuration\'s rules, with no side effects, and print what would have happened'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "record" -d 'Record live readings of a configuration\'s signals to a CSV recording'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "notify-test" -d 'Send a clearly marked test message through a configured notifier and print what the provider answered'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "status" -d 'What the running rearguard is doing: targets, rules, open incidents'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "why" -d 'The chain of readings, rules, decisions and actions behind an incident'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "ack" -d 'Acknowledge an incident: reminders stop; PagerDuty hears `acknowledge`'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "resolve" -d 'Resolve an incident by hand'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "rollback" -d 'Roll an incident\'s target back now with its plan, as an operator decided (the blame window, breaker, cooldown and pauses are yours to judge; a revision marked bad is never a destination)'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "pause" -d 'Pause automatic action on one target, or on all (a maintenance window)'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "resume" -d 'Resume automatic action on one target, or on all'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "clear-breaker" -d 'Clear a target\'s tripped circuit breaker'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "silence" -d 'Silence a rule for a while: its firing opens no incident until the silence ends'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "unsilence" -d 'Lift a rule\'s silence'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "demo" -d 'Watch a simulated service roll out a bad release and roll it back, end to end'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "recipes" -d 'The shipped rollback recipes: list them, or show one'
complete -c rearguard -n "__fish_rearguard_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rearguard -n "__fish_rearguard_using_subcommand check" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand check" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand check" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand run" -s c -l config -d 'The configuration file (TOML, or YAML by extension)' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand run" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand run" -l discard-state -d 'Start with an empty state when the state store cannot be read (a damaged database, engine memory that does not decode), which otherwise stops the start. What cannot be read is kept aside, not deleted'
complete -c rearguard -n "__fish_rearguard_using_subcommand run" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand run" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -s c -l config -d 'The configuration whose rules judge the readings' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l csv -d 'A recording (CSV, as `rearguard record` writes it)' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l from -d 'Start of the range: RFC 3339 or Unix seconds' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l to -d 'End of the range: RFC 3339 or Unix seconds' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l step -d 'Resolution of the range, e.g. "15s"' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l output -r -f -a "text\t'A readable timeline and a summary'
json\t'JSON lines, as documented in `src/replay.rs`'"
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l steps -d 'How replay answers each plan step it would have run' -r -f -a "succeed\t''
fail\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -l prometheus -d 'Read the configuration\'s Prometheus signals over --from..--to instead'
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c rearguard -n "__fish_rearguard_using_subcommand replay" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -s c -l config -d 'The configuration whose signals are read' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -s o -l out -d 'The recording to write; "-" for standard output' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -l duration -d 'Stop after this long, e.g. "10m"; otherwise at SIGTERM or SIGINT' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand record" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand notify-test" -s c -l config -d 'The configuration that defines the notifier' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand notify-test" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand notify-test" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand notify-test" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand status" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand why" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand ack" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand resolve" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand rollback" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand pause" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand resume" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand clear-breaker" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -l for -d 'How long, e.g. "1h"' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand silence" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -s c -l config -d 'The running rearguard\'s configuration: its listen address and control token' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -l api -d 'The API\'s base URL, when not `http://<daemon.listen>`' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -l operator -d 'Who is asking, for the audit trail (default: $USER)' -r
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand unsilence" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand demo" -l dir -d 'Where to keep the demo\'s files (default: a new temporary directory)' -r -F
complete -c rearguard -n "__fish_rearguard_using_subcommand demo" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand demo" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand demo" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and not __fish_seen_subcommand_from show help" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and not __fish_seen_subcommand_from show help" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and not __fish_seen_subcommand_from show help" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and not __fish_seen_subcommand_from show help" -f -a "show" -d 'Print a recipe: its parameters, preconditions, what it verifies, what it cannot undo, how it is tested, and the steps it expands into'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and not __fish_seen_subcommand_from show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and __fish_seen_subcommand_from show" -l log-format -d 'Log format on stderr' -r -f -a "text\t''
json\t''"
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print a recipe: its parameters, preconditions, what it verifies, what it cannot undo, how it is tested, and the steps it expands into'
complete -c rearguard -n "__fish_rearguard_using_subcommand recipes; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "check" -d 'Validate configuration files; print each rule\'s worst-case detection time'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "run" -d 'Run the watchdog'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "replay" -d 'Replay recorded readings through a configuration\'s rules, with no side effects, and print what would have happened'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "record" -d 'Record live readings of a configuration\'s signals to a CSV recording'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "notify-test" -d 'Send a clearly marked test message through a configured notifier and print what the provider answered'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "status" -d 'What the running rearguard is doing: targets, rules, open incidents'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "why" -d 'The chain of readings, rules, decisions and actions behind an incident'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "ack" -d 'Acknowledge an incident: reminders stop; PagerDuty hears `acknowledge`'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "resolve" -d 'Resolve an incident by hand'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "rollback" -d 'Roll an incident\'s target back now with its plan, as an operator decided (the blame window, breaker, cooldown and pauses are yours to judge; a revision marked bad is never a destination)'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "pause" -d 'Pause automatic action on one target, or on all (a maintenance window)'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "resume" -d 'Resume automatic action on one target, or on all'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "clear-breaker" -d 'Clear a target\'s tripped circuit breaker'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "silence" -d 'Silence a rule for a while: its firing opens no incident until the silence ends'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "unsilence" -d 'Lift a rule\'s silence'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "demo" -d 'Watch a simulated service roll out a bad release and roll it back, end to end'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "recipes" -d 'The shipped rollback recipes: list them, or show one'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and not __fish_seen_subcommand_from check run replay record notify-test status why ack resolve rollback pause resume clear-breaker silence unsilence demo recipes help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c rearguard -n "__fish_rearguard_using_subcommand help; and __fish_seen_subcommand_from recipes" -f -a "show" -d 'Print a recipe: its parameters, preconditions, what it verifies, what it cannot undo, how it is tested, and the steps it expands into'
