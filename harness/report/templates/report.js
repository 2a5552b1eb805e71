(function(){
  document.documentElement.classList.remove('noscript');
  var cur=null;
  function show(id){
    var sec=document.getElementById('d-'+id); if(!sec) return;
    if(cur){cur.classList.remove('shown');}
    document.querySelectorAll('td.c.sel').forEach(function(td){td.classList.remove('sel');});
    var td=document.querySelector('td.c[data-cell="'+id+'"]'); if(td) td.classList.add('sel');
    sec.classList.add('shown'); cur=sec;
    var hint=document.getElementById('hint'); if(hint) hint.style.display='none';
    if(history.replaceState) history.replaceState(null,'','#'+id);
  }
  document.querySelectorAll('td.c button').forEach(function(b){
    b.addEventListener('click',function(){show(b.parentNode.getAttribute('data-cell'));
      document.getElementById('detail').scrollIntoView({block:'nearest'});});
  });
  var only=document.getElementById('only-problems');
  if(only) only.addEventListener('change',function(){
    document.querySelectorAll('tr.row').forEach(function(tr){
      tr.style.display=(only.checked && tr.getAttribute('data-ok')==='1')?'none':'';});
  });
  if(location.hash.length>1) show(location.hash.slice(1));
})();
