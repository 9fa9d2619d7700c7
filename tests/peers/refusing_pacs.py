#!/usr/bin/env python3
"""A PACS (pynetdicom Storage SCP) that refuses one SOP class with status 0xC000.

    refusing_pacs.py PORT DIR REFUSED_SOP_CLASS_UID

Listens as AE "RECV" on 127.0.0.1:PORT and takes every storage SOP class. An instance of
REFUSED_SOP_CLASS_UID is answered 0xC000 ("Cannot understand") while DIR/accept-all does not
exist; every other instance (and that one, once DIR/accept-all exists) is written to
DIR/<SOP Instance UID>.dcm and answered 0x0000. Each C-STORE appends one line to DIR/log:
"<status hex> <SOP class UID> <SOP Instance UID>", so a test can count what arrived how often.
"""
import os
import sys

from pynetdicom import AE, evt, AllStoragePresentationContexts


def main():
    port, out, refused = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    os.makedirs(out, exist_ok=True)

    def on_store(event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        cls, uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        if cls == refused and not os.path.exists(os.path.join(out, "accept-all")):
            status = 0xC000
        else:
            ds.save_as(os.path.join(out, uid + ".dcm"), enforce_file_format=True)
            status = 0x0000
        with open(os.path.join(out, "log"), "a") as f:
            f.write(f"{status:04X} {cls} {uid}\n")
        if status:
            from pydicom.dataset import Dataset
            rsp = Dataset()
            rsp.Status = status
            rsp.ErrorComment = "refused by the test PACS"
            return rsp
        return status

    ae = AE(ae_title="RECV")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.start_server(("127.0.0.1", port), block=True,
                    evt_handlers=[(evt.EVT_C_STORE, on_store)])


if __name__ == "__main__":
    main()
