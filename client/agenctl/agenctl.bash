# bash completion for agenctl(1)                                  -*- shell-script -*-
# Verbs, their options and option values, resource names (from `agenctl --json=short
# resources`) and lease ids (from `agenctl --json=short list`), asking the agend the
# command line points at.
#
# The words are taken from COMP_WORDS as bash splits them, where "=" is a word of its own
# ("--json=sh" is "--json" "=" "sh"), and readline replaces only the text after the "=":
# so a value is completed without its "--option=" (else "--json=<TAB>" would insert
# "--json=--json="). This works with and without the bash-completion package.

__agenctl_query() {
        # $1: verb, $2: the JSON key to pick ("name" or "id"); the rest: --socket, if given.
        local verb=$1 key=$2
        shift 2
        agenctl "$@" --json=short "$verb" 2>/dev/null |
                grep -o "\"$key\":\"[^\"]*\"" | sed -e "s/^\"$key\":\"//" -e 's/"$//' | sort -u
}

_agenctl() {
        local cur=${COMP_WORDS[COMP_CWORD]} prev="" cword=$COMP_CWORD
        local -a words=("${COMP_WORDS[@]}")
        COMPREPLY=()

        local verbs="list show resources status run acquire release renew revoke check watch history help"
        local global="--help --version --socket --no-pager"
        # Options that take a value in the next word (or after "=").
        local with_value="--socket -s --units -u --timeout -w --ttl -t --description -d --conflict-exit-code -E
                --kill-delay --secret --reason -r --lines -n --hold-until --reconnect-timeout"
        local -A opts=(
                [list]="--no-legend --full --json"
                [show]="--json"
                [resources]="--no-legend --full --json"
                [status]="--json"
                [run]="--units --exclusive --timeout --nowait --ttl --description --conflict-exit-code --kill-delay
                       --quiet --hold-until --reconnect-timeout"
                [acquire]="--units --exclusive --timeout --nowait --ttl --description --conflict-exit-code --quiet
                           --detach --reconnect-timeout --json"
                [release]="--secret --json"
                [renew]="--ttl --secret --json"
                [revoke]="--reason --json"
                [check]="--quiet --json"
                [watch]="--no-reconnect --json"
                [history]="--no-legend --full --lines --json"
                [help]=""
        )

        # "--opt=VALUE": complete VALUE for --opt.
        local split=""
        if [[ $cur == "=" ]]; then
                split=${words[cword - 1]}
                cur=""
        elif ((cword >= 2)) && [[ ${words[cword - 1]} == "=" ]]; then
                split=${words[cword - 2]}
        elif ((cword >= 1)); then
                prev=${words[cword - 1]}
        fi

        # The verb, the positional arguments after it, --socket, and where run's command
        # starts (after "--", or at the first argument after RESOURCE).
        local i w verb="" npos=0 socket=() cmd_at=0
        for ((i = 1; i < cword; i++)); do
                w=${words[i]}
                if [[ ${words[i + 1]-} == "=" ]]; then
                        # --opt = VALUE
                        [[ $w == --socket ]] && ((i + 2 < cword)) && socket=(--socket "${words[i + 2]}")
                        ((i += 2))
                        continue
                fi
                case $w in
                --)
                        if [[ $verb == run ]]; then
                                cmd_at=$((i + 1))
                                break
                        fi
                        continue
                        ;;
                -*)
                        if [[ " ${with_value//$'\n'/ } " == *" $w "* ]]; then
                                [[ $w == --socket || $w == -s ]] && socket=(--socket "${words[i + 1]}")
                                ((i++))
                        fi
                        continue
                        ;;
                esac
                if [[ -z $verb ]]; then
                        verb=$w
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

        local value_of=${split:-$prev}
        case $value_of in
        --json)
                # Only "--json=MODE": a separate word after --json is the next argument.
                if [[ -n $split ]]; then
                        COMPREPLY=($(compgen -W "short pretty off" -- "$cur"))
                        return
                fi
                ;;
        --hold-until)
                COMPREPLY=($(compgen -W "all command" -- "$cur"))
                return
                ;;
        --socket | -s)
                COMPREPLY=($(compgen -f -- "$cur"))
                return
                ;;
        *)
                if [[ -n $split || " ${with_value//$'\n'/ } " == *" $value_of "* ]]; then
                        return # a number, a duration, a text: nothing to offer
                fi
                ;;
        esac

        if [[ $cur == -* ]]; then
                local o="$global"
                if [[ -n $verb ]]; then
                        o+=" ${opts[$verb]-}"
                else
                        o+=" --json"
                fi
                COMPREPLY=($(compgen -W "$o" -- "$cur"))
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
        if [[ $verb == check && $npos -eq 0 ]]; then
                COMPREPLY=($(compgen -W "$(__agenctl_query resources name "${socket[@]}")" -- "$cur"))
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
