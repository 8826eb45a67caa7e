# bash completion for agenctl(1)                                  -*- shell-script -*-
# Verbs, their options, resource names (from `agenctl --json=short resources`) and lease
# ids (from `agenctl --json=short list`), asking the agend the command line points at.

__agenctl_query() {
        # $1: verb, $2: the JSON key to pick ("name" or "id"); the rest: --socket, if given.
        local verb=$1 key=$2
        shift 2
        agenctl "$@" --json=short "$verb" 2>/dev/null |
                grep -o "\"$key\":\"[^\"]*\"" | sed -e "s/^\"$key\":\"//" -e 's/"$//' | sort -u
}

_agenctl() {
        local cur prev words cword
        if declare -F _init_completion >/dev/null 2>&1; then
                _init_completion -n = || return
        else
                COMPREPLY=()
                cur=${COMP_WORDS[COMP_CWORD]}
                prev=${COMP_WORDS[COMP_CWORD - 1]}
                words=("${COMP_WORDS[@]}")
                cword=$COMP_CWORD
        fi

        local verbs="list show resources status run acquire release renew revoke watch history help"
        local global="--help --version --socket --json --no-pager"
        local -A opts=(
                [list]="--no-legend --full"
                [show]=""
                [resources]="--no-legend --full"
                [status]=""
                [run]="--units --exclusive --timeout --nowait --ttl --description --conflict-exit-code --kill-delay --quiet"
                [acquire]="--units --exclusive --timeout --nowait --ttl --description --conflict-exit-code --quiet --detach"
                [release]="--secret"
                [renew]="--ttl --secret"
                [revoke]="--reason"
                [watch]=""
                [history]="--no-legend --full --lines"
                [help]=""
        )

        # The verb, the positional arguments after it, --socket, and where run's command
        # starts (after "--", or at the first argument after RESOURCE).
        local i verb="" npos=0 socket=() cmd_at=0
        for ((i = 1; i < cword; i++)); do
                case ${words[i]} in
                --socket | -s)
                        socket=(--socket "${words[i + 1]}")
                        ((i++))
                        continue
                        ;;
                --socket=*)
                        socket=("${words[i]}")
                        continue
                        ;;
                --)
                        if [[ $verb == run ]]; then
                                cmd_at=$((i + 1))
                                break
                        fi
                        continue
                        ;;
                --units | -u | --timeout | -w | --ttl | -t | --description | -d | --conflict-exit-code | -E | \
                        --kill-delay | --secret | --reason | -r | --lines | -n)
                        ((i++))
                        continue
                        ;;
                -*) continue ;;
                esac
                if [[ -z $verb ]]; then
                        verb=${words[i]}
                        continue
                fi
                ((npos++))
                if [[ $verb == run && $npos -ge 2 ]]; then
                        cmd_at=$i
                        break
                fi
        done

        if ((cmd_at > 0)); then
                if declare -F _command_offset >/dev/null 2>&1; then
                        _command_offset "$cmd_at"
                elif ((cword == cmd_at)); then
                        COMPREPLY=($(compgen -c -- "$cur"))
                else
                        COMPREPLY=($(compgen -f -- "$cur"))
                fi
                return
        fi

        case $prev in
        --socket | -s)
                COMPREPLY=($(compgen -f -- "$cur"))
                return
                ;;
        --json)
                return
                ;;
        --units | -u | --timeout | -w | --ttl | -t | --description | -d | --conflict-exit-code | -E | \
                --kill-delay | --secret | --reason | -r | --lines | -n)
                return
                ;;
        esac
        if [[ $cur == --json=* ]]; then
                COMPREPLY=($(compgen -P "--json=" -W "short pretty off" -- "${cur#--json=}"))
                return
        fi

        if [[ $cur == -* ]]; then
                COMPREPLY=($(compgen -W "$global ${opts[$verb]:-}" -- "$cur"))
                return
        fi

        if [[ -z $verb ]]; then
                COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
                return
        fi
        if [[ $verb == run && $npos -eq 1 ]]; then
                COMPREPLY=($(compgen -c -- "$cur"))
                return
        fi
        ((npos > 0)) && return

        case $verb in
        list | run | acquire | watch | history)
                COMPREPLY=($(compgen -W "$(__agenctl_query resources name "${socket[@]}")" -- "$cur"))
                ;;
        show | release | renew | revoke)
                COMPREPLY=($(compgen -W "$(__agenctl_query list id "${socket[@]}")" -- "$cur"))
                ;;
        help)
                COMPREPLY=($(compgen -W "$verbs" -- "$cur"))
                ;;
        esac
}

complete -F _agenctl agenctl
