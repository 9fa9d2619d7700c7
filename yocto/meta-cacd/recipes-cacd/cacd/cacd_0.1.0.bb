# nooelint: oelint.var.mandatoryvar.HOMEPAGE - no public home page yet; the source is this repository
SUMMARY = "Coronary artery calcium scoring appliance for low-dose chest CT"
DESCRIPTION = "cacd receives chest CT studies over DICOM, segments coronary calcium \
               with a small 3-D network, computes Agatston scores, risk categories \
               and CAC-DRS, and sends DICOM results (SEG, SR, a key image) to the PACS."
SECTION = "science"
CVE_PRODUCT = "cacd"
LICENSE = "Apache-2.0"
# The workspace manifest's license line (the source tree has no separate license file).
LIC_FILES_CHKSUM = "file://Cargo.toml;beginline=9;endline=9;md5=2507bd5f0713f05419cd2f22fa06fe62"

PV .= "+git"

# conf/layer.conf sets CACD_REPO_DIR to the repository that holds this layer.
CACD_GIT_URI ??= "${CACD_REPO_DIR}"
CACD_GIT_PROTOCOL ??= "file"
SRC_URI = "git://${CACD_GIT_URI};protocol=${CACD_GIT_PROTOCOL};branch=main \
           file://cacd.toml \
           "
# Development images build the checked-out branch of this repository; a release build sets
# SRCREV (and CACD_GIT_URI) in its configuration to a pinned commit.
# nooelint: oelint.vars.autorev - see above
SRCREV ?= "${AUTOREV}"

S = "${WORKDIR}/git"

require cacd-crates.inc

inherit cargo cargo-update-recipe-crates systemd useradd

# cargo features from PACKAGECONFIG:
#   jpegls   JPEG-LS decoding (CharLS, C++ built with cmake)
#   cuda     GPU preprocessing; CUDA version from CACD_CUDA_VERSION (JetPack 6: 12.6)
#   tensorrt the ONNX Runtime engine with the CUDA/TensorRT providers (libonnxruntime at run time)
PACKAGECONFIG ??= "jpegls"
# Jetson Orin (tegra234, JetPack 6 / L4T R36): CUDA 12.6 and TensorRT.
PACKAGECONFIG:tegra234 ??= "jpegls cuda tensorrt"
PACKAGECONFIG[jpegls] = ",,cmake-native"
PACKAGECONFIG[cuda] = ",,,cuda-cudart cuda-nvrtc tegra-libraries-cuda"
PACKAGECONFIG[tensorrt] = ",,,onnxruntime tensorrt-core"

# cudarc (the `cuda-base` feature) takes the CUDA version from here: 12060 = CUDA 12.6.
CACD_CUDA_VERSION ??= "12060"
export CUDARC_CUDA_VERSION = "${CACD_CUDA_VERSION}"

def cacd_cargo_features(d):
    """PACKAGECONFIG flags -> the appliance's cargo features, comma-separated."""
    mapping = {"jpegls": "jpegls", "cuda": "cuda-base", "tensorrt": "tensorrt"}
    flags = (d.getVar("PACKAGECONFIG") or "").split()
    return ",".join(mapping[f] for f in flags if f in mapping)

CACD_CARGO_FEATURES = "${@cacd_cargo_features(d)}"

do_compile() {
    oe_cargo_build -p cacd --bin cacd --no-default-features --features "${CACD_CARGO_FEATURES}"
}

do_install() {
    install -d ${D}${bindir}
    install -m 0755 ${B}/target/${CARGO_TARGET_SUBDIR}/cacd ${D}${bindir}/cacd

    # The models: manifest.toml names each artifact with its sha256, checked at start-up.
    install -d ${D}${datadir}/cacd/models
    install -m 0644 ${S}/models/manifest.toml ${D}${datadir}/cacd/models/
    install -m 0644 ${S}/models/*.onnx ${D}${datadir}/cacd/models/

    # Site configuration: root-owned, readable by the service's group only.
    install -d ${D}${sysconfdir}/cacd
    install -m 0640 -g cacd ${WORKDIR}/cacd.toml ${D}${sysconfdir}/cacd/cacd.toml
    if ${@bb.utils.contains('PACKAGECONFIG', 'tensorrt', 'true', 'false', d)}; then
        sed -i -e 's|^# engine = "tensorrt"$|engine = "tensorrt"|' \
               -e 's|^# ort_dylib = ".*"$|ort_dylib = "${libdir}/libonnxruntime.so"|' \
               ${D}${sysconfdir}/cacd/cacd.toml
    fi

    install -d ${D}${systemd_system_unitdir}
    install -m 0644 ${S}/deploy/systemd/cacd.service ${D}${systemd_system_unitdir}/
    # The data partition (label cacd-data) on /var/lib/cacd; pulled in by cacd.service.
    install -m 0644 ${S}/deploy/systemd/var-lib-cacd.mount ${D}${systemd_system_unitdir}/
    install -d ${D}${nonarch_base_libdir}/udev/rules.d
    install -m 0644 ${S}/deploy/systemd/90-cacd-led.rules ${D}${nonarch_base_libdir}/udev/rules.d/

    install -d ${D}${docdir}/cacd
    install -m 0644 ${S}/README.md ${S}/deploy/cacd.example.toml ${D}${docdir}/cacd/
}

USERADD_PACKAGES = "${PN}"
# The service's own system user; video: the Jetson GPU device nodes.
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/cacd --no-create-home \
                       --shell /sbin/nologin --user-group --groups video cacd"

SYSTEMD_SERVICE:${PN} = "cacd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

CONFFILES:${PN} = "${sysconfdir}/cacd/cacd.toml"
FILES:${PN} += "${nonarch_base_libdir}/udev/rules.d ${systemd_system_unitdir}/var-lib-cacd.mount"
