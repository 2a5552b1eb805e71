"""BTF: kernel and BPF-object type information, .BTF.ext and CO-RE relocations."""
