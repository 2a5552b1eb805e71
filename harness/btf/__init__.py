"""BTF: type records, parsing a BTF blob, .BTF.ext and CO-RE relocations of BPF objects."""
