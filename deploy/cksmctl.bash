# bash completion for cksmctl
_cksmctl()
{
	local cur prev cmds opts
	cur=${COMP_WORDS[COMP_CWORD]}
	prev=${COMP_WORDS[COMP_CWORD-1]}
	cmds="status nodes stats matrix top tree"
	opts="-c --config -o --output -t --timeout -h --help"
	case $prev in
	-c|--config)
		COMPREPLY=($(compgen -f -- "$cur"))
		return
		;;
	-o|--output)
		COMPREPLY=($(compgen -W "text json" -- "$cur"))
		return
		;;
	-t|--timeout)
		return
		;;
	esac
	local w
	for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do
		case " $cmds " in
		*" $w "*)
			COMPREPLY=($(compgen -W "--help" -- "$cur"))
			return
			;;
		esac
	done
	COMPREPLY=($(compgen -W "$cmds $opts" -- "$cur"))
}
complete -F _cksmctl cksmctl
