"""ddmctl command of DDM."""

from ddm.startup import leave_out_optional_imports

# Before any module of this package imports paramiko (see ddm.startup).
leave_out_optional_imports()
