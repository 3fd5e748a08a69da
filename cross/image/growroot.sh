#!/bin/sh
# Grows the root partition to the end of its disk, and the ext4 file system
# in it with it: the image is small to write, the card is larger. Run by
# flotilla-growroot.service at every boot; once the partition reaches the
# end of the disk (or is not the last one), it changes nothing. The
# partition table is the image's MBR; the file system grows while mounted.
set -eu

say() { echo "flotilla grow root: $*"; }

source=$(findmnt -no SOURCE /)
part=$(basename "$(readlink -f "$source")")
sys=/sys/class/block/$part
[ -e "$sys/partition" ] || { say "/ is on $source, not on a partition: nothing to grow"; exit 0; }
number=$(cat "$sys/partition")
disk=$(basename "$(readlink -f "$sys/..")")
start=$(cat "$sys/start")
size=$(cat "$sys/size")
total=$(cat "/sys/class/block/$disk/size")
# Sizes in 512-byte sectors. Another partition after this one keeps it.
for other in /sys/class/block/"$disk"/"$disk"*; do
    [ -e "$other/start" ] || continue
    if [ "$(cat "$other/start")" -gt "$start" ]; then
        say "partition $number of /dev/$disk is not the last one: left as it is"
        exit 0
    fi
done
# Under 1 MiB beyond the partition is no more than alignment leaves:
# nothing to grow into.
if [ $((total - start - size)) -lt 2048 ]; then
    exit 0
fi
say "/dev/$part: $((size / 2048)) MiB -> $(((total - start) / 2048)) MiB (to the end of /dev/$disk)"
# --no-reread: the disk is in use, which is the point; partx tells the
# kernel the partition's new size, and resize2fs grows the mounted ext4.
echo ", +" | sfdisk --quiet --no-reread --no-tell-kernel -N "$number" "/dev/$disk"
partx --update --nr "$number" "/dev/$disk"
resize2fs "/dev/$part"
sync
