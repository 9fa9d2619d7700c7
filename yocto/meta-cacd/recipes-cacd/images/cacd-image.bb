SUMMARY = "cacd appliance image for NVIDIA Jetson (meta-tegra)"
DESCRIPTION = "A minimal systemd image that boots into the cacd calcium scoring service, \
               with its data on a partition of its own."
LICENSE = "MIT"

inherit core-image

IMAGE_FEATURES += "ssh-server-openssh"

IMAGE_INSTALL = "packagegroup-core-boot \
                 cacd \
                 e2fsprogs-mke2fs \
                 ${CORE_IMAGE_EXTRA_INSTALL} \
                 "

# Room for the queue and the studies comes from the data partition, not the root file system.
IMAGE_ROOTFS_EXTRA_SPACE = "524288"
